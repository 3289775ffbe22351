"""Every field of every config, given hostile values: each is accepted and runs, or is a
`ConfigError` naming the field, what was expected and what was found; never an error from deep in
the build. Where the reference (transformers' strict config dataclasses) refuses a value's type,
lamina refuses it too."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import lamina
from lamina.config import is_integer
from lamina.errors import ConfigError, LaminaError

transformers = pytest.importorskip("transformers")

DECODER = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64)
ENCODER = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
               max_position_embeddings=64)
# family → (config's tiny keyword arguments, model class built from an accepted config)
FAMILIES = {
    "Mistral": (dict(DECODER, head_dim=8, sliding_window=4), "MistralForCausalLM"),
    "Ministral": (dict(DECODER, sliding_window=4), "MinistralForCausalLM"),
    "Mixtral": (dict(DECODER, num_local_experts=4), "MixtralForCausalLM"),
    "Llama": (DECODER, "LlamaForCausalLM"),
    "Qwen2": (DECODER, "Qwen2ForCausalLM"),
    "Persimmon": ({k: v for k, v in DECODER.items() if k != "num_key_value_heads"}, "PersimmonForCausalLM"),
    "GPT2": (dict(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64), "GPT2LMHeadModel"),
    "MegatronBert": (ENCODER, "MegatronBertForMaskedLM"),
    "MobileBert": (dict(ENCODER, embedding_size=16, intra_bottleneck_size=16, intermediate_size=16,
                        num_feedforward_networks=2), "MobileBertForMaskedLM"),
    "Mega": (dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=48, ema_projection_size=4,
                  shared_representation_size=16, nffn_hidden_size=48, max_positions=64), "MegaForMaskedLM"),
}
HOSTILE = [True, 1.5, -1, 0, 10**12, 2**63, 10**400, math.nan, math.inf, "x", [1], {"a": 1}, None]


def _fields(family: str) -> list[str]:
    return list(getattr(lamina, family + "Config")._field_types())


def _try(family: str, name: str, value):
    """The config built with `name=value` and what building and running its model raised."""
    kwargs, model_name = FAMILIES[family]
    config = getattr(lamina, family + "Config")(**{**kwargs, name: value})
    torch.manual_seed(0)
    model = getattr(lamina, model_name)(config).eval()
    # with gradients, as in training: PyTorch's products (lamina's kernels are for inference and
    # start threads that make a thousand tiny forwards slow on a busy machine)
    model(torch.tensor([[1, 2, 3]]))
    return config


def _reference_refuses_type(family: str, name: str, value) -> bool:
    """Whether transformers' config refuses `value` for `name` by its type."""
    kwargs, _ = FAMILIES[family]
    reference = getattr(transformers, family + "Config", None)
    huge = isinstance(value, int) and abs(value) > 2**31  # its configs build lists of 10**12 layers
    if reference is None or huge:  # MEGA is gone from transformers 5
        return False
    try:
        reference(**{**kwargs, name: value})
    except Exception as err:  # its strict dataclass's own error type
        return "TypeError" in str(err) or isinstance(err, TypeError)
    return False


@pytest.mark.parametrize("family, name", [(family, name) for family in FAMILIES for name in _fields(family)])
def test_every_field_accepts_or_names_itself(family, name):
    for value in HOSTILE:
        try:
            _try(family, name, value)
        except ConfigError as err:
            message = str(err)
            assert name in message, (value, message)
            if message.startswith(f"{name}:"):
                assert "expected" in message and f"found {value!r}"[:20] in message, message
        except LaminaError:
            pass  # e.g. a combination the family refuses (an activation's own clear error)
        else:
            # lamina takes integers for numbers (a file's `0` for 0.0), and None for the key-value
            # heads as transformers 4 did (the attention heads' count then)
            if not is_integer(value) and (name, value) != ("num_key_value_heads", None):
                assert not _reference_refuses_type(family, name, value), (
                    f"{family}Config accepts {name}={value!r}, which transformers refuses by its type")


def test_the_reference_check_can_fail():
    """The sweep's comparison asks a question the reference answers both ways."""
    assert _reference_refuses_type("Mistral", "rms_norm_eps", "x")
    assert not _reference_refuses_type("Mistral", "rms_norm_eps", 1e-3)


@pytest.mark.parametrize("name, value", [
    ("pad_token_id", True), ("pad_token_id", 1.5), ("pad_token_id", 10**12),
    ("rms_norm_eps", "x"), ("rms_norm_eps", None), ("rms_norm_eps", [1e-5]),
    ("rope_parameters", "x"), ("rope_parameters", 3), ("rope_parameters", [1]),
    ("sliding_window", True), ("sliding_window", 2**63),
    ("rope_parameters", {"rope_type": "default", "rope_theta": "x"}),
    ("rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": -2.0}),
    ("rope_theta", math.nan), ("eos_token_id", [1, "x"]), ("num_hidden_layers", 2.0),
])
def test_mistral_directory_with_a_bad_value_is_a_config_error(tmp_path, name, value):
    """The issue's repros: a small Mistral directory whose config.json holds one bad value."""
    kwargs, _ = FAMILIES["Mistral"]
    lamina.MistralForCausalLM(lamina.MistralConfig(**kwargs)).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data.pop("rope_parameters") if name == "rope_theta" else None
    (tmp_path / "config.json").write_text(json.dumps({**data, name: value}))
    field = name if name != "rope_parameters" or not isinstance(value, dict) else "rope_parameters."
    with pytest.raises(ConfigError, match=rf"^{field}.*expected .*, found "):
        lamina.MistralForCausalLM.from_pretrained(tmp_path)


def test_huge_sliding_window_loads_and_allocates_what_the_run_needs(tmp_path):
    """The reference accepts a window of 10**12; the cache holds the run's slots, not the window's."""
    kwargs, _ = FAMILIES["Mistral"]
    torch.manual_seed(0)
    lamina.MistralForCausalLM(lamina.MistralConfig(**kwargs)).save_pretrained(tmp_path / "small")
    shutil.copytree(tmp_path / "small", tmp_path / "huge")
    data = json.loads((tmp_path / "small" / "config.json").read_text())
    (tmp_path / "huge" / "config.json").write_text(json.dumps({**data, "sliding_window": 10**12}))
    (tmp_path / "small" / "config.json").write_text(json.dumps({**data, "sliding_window": 64}))
    huge = lamina.MistralForCausalLM.from_pretrained(tmp_path / "huge")
    small = lamina.MistralForCausalLM.from_pretrained(tmp_path / "small")
    assert huge.config.sliding_window == 10**12
    prompt = torch.tensor([[5, 9, 2, 7, 1]])
    for kind in ("static", "dynamic"):
        cache = huge.model.make_cache(kind, 12) if kind == "static" else huge.model.make_cache()
        out = huge.generate(prompt, max_new_tokens=6, do_sample=False)
        assert torch.equal(out, small.generate(prompt, max_new_tokens=6, do_sample=False))
        with torch.no_grad():
            huge(prompt, past_key_values=cache, use_cache=True)
            huge(torch.tensor([[3]]), past_key_values=cache, use_cache=True,
                 cache_position=torch.tensor([5]))
        assert all(layer.keys.shape[2] <= 12 for layer in cache.layers)


def test_a_window_of_a_run_longer_than_a_grown_ring_keeps_every_key():
    """A growing ring (no max_length) doubles while no position has wrapped: every key kept."""
    from lamina.cache import RollingLayerCache

    ring = RollingLayerCache(window=10**12)
    keys = torch.arange(7.0).reshape(1, 1, 7, 1)
    ring.update(keys[:, :, :3], keys[:, :, :3], torch.arange(3))
    for position in range(3, 7):
        stored, _, positions = ring.update(keys[:, :, position:position + 1], keys[:, :, position:position + 1],
                                           torch.tensor([position]))
    written = positions >= 0
    assert positions[written].tolist() == list(range(7))
    assert stored[0, 0, written, 0].tolist() == list(range(7))
    assert ring.slots < 16


@pytest.mark.parametrize("name, value", [
    ("pad_token_id", -1), ("eos_token_id", [1, 2]), ("attention_dropout", 1), ("sliding_window", 10**12),
    ("rms_norm_eps", 1e-3), ("hidden_act", "gelu"), ("rope_parameters", {"rope_type": "linear", "factor": 2.0}),
])
def test_what_the_reference_accepts_is_accepted(name, value):
    kwargs, _ = FAMILIES["Mistral"]
    reference = transformers.MistralConfig(**{**kwargs, name: value})
    ours = _try("Mistral", name, value)
    assert getattr(ours, name) == getattr(reference, name) or name == "rope_parameters"


def test_declared_types_are_not_written_for_class_settings():
    """`default_theta` (a ClassVar) is a class setting, not a config.json key."""
    assert "default_theta" not in lamina.MixtralConfig().to_dict()


def test_a_key_cannot_replace_what_a_config_recorded_before_its_fields():
    with pytest.raises(ConfigError, match="_legacy_rope"):
        lamina.MistralConfig(_legacy_rope=True)
