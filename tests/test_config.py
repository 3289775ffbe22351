"""Configs: documented defaults, both spellings of rotary and dtype keys, unknown keys kept, and
invalid values rejected with the field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lamina
from lamina.errors import ConfigError

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("family", ["Mistral", "Ministral", "Mixtral"])
def test_defaults_equal_the_reference(family):
    ours = getattr(lamina, family + "Config")().to_dict()
    theirs = getattr(transformers, family + "Config")().to_dict()
    for key, value in theirs.items():
        if key in ours and key not in ("transformers_version", "dtype", "architectures"):
            assert ours[key] == value, key


def test_documented_values():
    mistral = lamina.MistralConfig()
    assert (mistral.vocab_size, mistral.hidden_size, mistral.intermediate_size) == (32000, 4096, 14336)
    assert (mistral.num_hidden_layers, mistral.num_attention_heads, mistral.num_key_value_heads) == (32, 32, 8)
    assert mistral.sliding_window == 4096 and mistral.rope_theta == 10000.0 and mistral.max_position_embeddings == 131072
    assert mistral.rms_norm_eps == 1e-6 and mistral.tie_word_embeddings is False and mistral.head_dim == 128
    mixtral = lamina.MixtralConfig()
    assert mixtral.rms_norm_eps == 1e-5 and mixtral.rope_theta == 1e6 and mixtral.sliding_window is None
    assert (mixtral.num_local_experts, mixtral.num_experts_per_tok, mixtral.router_aux_loss_coef) == (8, 2, 0.001)
    assert mixtral.num_experts == 8
    ministral = lamina.MinistralConfig(num_hidden_layers=3)
    assert ministral.layer_types == ["sliding_attention"] * 3
    assert lamina.MinistralConfig(num_hidden_layers=2, sliding_window=None).layer_types == ["full_attention"] * 2


def test_legacy_spelling_round_trips(tmp_path):
    data = {
        "model_type": "mistral", "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0},
        "torch_dtype": "bfloat16", "my_custom_key": [1, 2], "num_labels": 4,
    }
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = lamina.MistralConfig.from_pretrained(tmp_path)
    assert config.rope_parameters == {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}
    assert config.my_custom_key == [1, 2] and config.num_labels == 4
    config.save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["rope_theta"] == 5e5 and written["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert written["torch_dtype"] == "bfloat16" and "dtype" not in written
    assert written["my_custom_key"] == [1, 2]
    reference = transformers.MistralConfig.from_pretrained(tmp_path / "out")
    assert reference.rope_parameters["rope_theta"] == 5e5 and reference.rope_parameters["factor"] == 2.0


def test_new_spelling_round_trips(tmp_path):
    reference = transformers.MistralConfig(rope_parameters={"rope_type": "default", "rope_theta": 123.0}, dtype="float16")
    reference.save_pretrained(tmp_path)
    config = lamina.AutoConfig.from_pretrained(tmp_path)
    assert config.rope_theta == 123.0 and config.dtype == "float16"
    written = config.to_dict()
    assert written["rope_parameters"]["rope_theta"] == 123.0 and "rope_theta" not in written


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(hidden_size=30, num_attention_heads=4), "num_attention_heads"),
        (dict(num_attention_heads=8, num_key_value_heads=3), "num_key_value_heads"),
        (dict(num_hidden_layers=2, layer_types=["full_attention"]), "layer_types"),
        (dict(num_hidden_layers=1, layer_types=["global"]), "layer_types"),
        (dict(sliding_window=-3), "sliding_window"),
        (dict(rope_scaling={"rope_type": "fancy"}), "rope_type"),
        (dict(problem_type="ranking"), "problem_type"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        lamina.MinistralConfig(**kwargs)


def test_experts_per_token_bound():
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        lamina.MixtralConfig(num_local_experts=2, num_experts_per_tok=3)


def test_labels():
    config = lamina.MistralConfig(id2label={"0": "neg", "1": "pos"})
    assert config.num_labels == 2 and config.label2id == {"neg": 0, "pos": 1}
    config.num_labels = 3
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


# attributes the family docs list besides the config class's own fields (rotary settings that
# transformers 5 folds into rope_parameters)
DOCUMENTED_BESIDES_FIELDS = {"Persimmon": ["partial_rotary_factor", "rope_theta"], "Mistral": ["rope_theta"],
                             "Ministral": ["rope_theta"], "Mixtral": ["rope_theta"]}


def _documented(family: str) -> list[str]:
    if family == "Mega":  # gone from transformers 5: the keys transformers 4.46 wrote (a recorded fixture)
        path = Path(__file__).parent / "fixtures" / "mega" / "model_causal_ema_full_attention" / "config.json"
        written = json.loads(path.read_text())
        return [k for k in written if k not in ("transformers_version", "architectures", "model_type", "torch_dtype")]
    own = vars(getattr(transformers, family + "Config")).get("__annotations__", {})
    return [name for name in own if not name.startswith("_")] + DOCUMENTED_BESIDES_FIELDS.get(family, [])


@pytest.mark.parametrize("family", ["Mistral", "Ministral", "Mixtral", "Persimmon", "GPT2", "MegatronBert",
                                    "MobileBert", "Mega"])
def test_documented_attributes_are_readable_and_round_trip(family, tmp_path):
    names = _documented(family)
    assert len(names) > 10
    config = getattr(lamina, family + "Config")()
    config.save_pretrained(tmp_path)
    again = getattr(lamina, family + "Config").from_pretrained(tmp_path)
    for name in names:
        assert getattr(again, name) == getattr(config, name), name


def test_persimmon_partial_rotary_factor(tmp_path):
    assert lamina.PersimmonConfig().partial_rotary_factor == 0.5
    assert transformers.PersimmonConfig().rope_parameters["partial_rotary_factor"] == 0.5
    config = lamina.PersimmonConfig(partial_rotary_factor=0.25)
    config.save_pretrained(tmp_path)
    assert lamina.PersimmonConfig.from_pretrained(tmp_path).partial_rotary_factor == 0.25
    assert transformers.PersimmonConfig.from_pretrained(tmp_path).rope_parameters["partial_rotary_factor"] == 0.25
    config.partial_rotary_factor = 0.5
    assert config.to_dict()["partial_rotary_factor"] == 0.5
    with pytest.raises(ConfigError, match=r"partial_rotary_factor: expected a finite number in \(0.0, 1.0\]"):
        config.partial_rotary_factor = 0.0
