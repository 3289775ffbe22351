"""Mistral's original layout (params.json + consolidated.safetensors / .pth), written by the test
from a transformers model: it loads directly with the same logits and converts to an HF directory
that transformers loads with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lamina
from lamina.checkpoints.interleaved import permute_rotary

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=80, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=1e6,
            tie_word_embeddings=False)
PARAMS = dict(dim=32, hidden_dim=48, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=8, norm_eps=1e-5, rope_theta=1e6,
              vocab_size=80, max_seq_len=256)
CASES = {
    "mistral": (dict(sliding_window=6), dict(sliding_window=6)),
    "ministral": (dict(sliding_window=5, layer_types=["sliding_attention"] * 3 + ["full_attention"]),
                  dict(sliding_window=[5, 5, 5, 256])),
    "mixtral": (dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=None),
                dict(moe=dict(num_experts=4, num_experts_per_tok=2))),
}
ORIGINAL = {
    "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3",
}


def _original_name(name: str) -> str:
    fixed = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
             "lm_head.weight": "output.weight"}
    if name in fixed:
        return fixed[name]
    name = name.removeprefix("model.")
    for hf, original in ORIGINAL.items():
        name = name.replace(f".{hf}.", f".{original}.")
    return name


def _hf_model(family: str):
    torch.manual_seed(0)
    extra, _ = CASES[family]
    config_class = getattr(transformers, family.capitalize() + "Config")
    model_class = getattr(transformers, family.capitalize() + "ForCausalLM")
    return model_class(config_class(**TINY, **extra)).eval()


def write_original(model, family: str, directory: Path, pth: bool = False) -> None:
    """The model's weights in mistral-inference's names and interleaved q/k layout."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, weight in model.state_dict().items():
        if ".mlp.experts." in name or ".mlp.gate." in name:
            # transformers stacks the experts; mistral-inference keeps each as w1/w2/w3
            prefix = name.split(".mlp.")[0].removeprefix("model.") + ".feed_forward."
            if name.endswith("gate.weight"):
                state[prefix + "gate.weight"] = weight
            for expert, tensor in enumerate(weight if "experts" in name else []):
                if name.endswith("gate_up_proj"):
                    gate, up = tensor.chunk(2, dim=0)
                    state[f"{prefix}experts.{expert}.w1.weight"] = gate.contiguous()
                    state[f"{prefix}experts.{expert}.w3.weight"] = up.contiguous()
                else:
                    state[f"{prefix}experts.{expert}.w2.weight"] = tensor.contiguous()
            continue
        if "q_proj" in name:
            weight = permute_rotary(weight, TINY["num_attention_heads"])
        elif "k_proj" in name:
            weight = permute_rotary(weight, TINY["num_key_value_heads"])
        state[_original_name(name)] = weight.contiguous()
    if pth:
        torch.save(state, directory / "consolidated.00.pth")
    else:
        save_file(state, directory / "consolidated.safetensors")
    (directory / "params.json").write_text(json.dumps({**PARAMS, **CASES[family][1]}))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", sorted(CASES))
def test_original_layout_loads_and_converts(tmp_path, family):
    reference = _hf_model(family)
    source = tmp_path / "original"
    write_original(reference, family, source)
    model = lamina.AutoModelForCausalLM.from_pretrained(source)
    assert model.config.model_type == family
    if family == "ministral":
        assert model.config.layer_types == ["sliding_attention"] * 3 + ["full_attention"]
    ids = torch.randint(0, TINY["vocab_size"], (2, 13), generator=torch.Generator().manual_seed(1))
    expected = _logits(reference, ids)
    torch.testing.assert_close(_logits(model, ids), expected, atol=1e-4, rtol=1e-4)

    model.save_pretrained(tmp_path / "hf")
    converted = getattr(transformers, family.capitalize() + "ForCausalLM").from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(_logits(converted, ids), expected, atol=1e-4, rtol=1e-4)


def test_pth_weights_load(tmp_path):
    reference = _hf_model("mistral")
    write_original(reference, "mistral", tmp_path, pth=True)
    model = lamina.MistralForCausalLM.from_pretrained(tmp_path)
    ids = torch.arange(10)[None]
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), atol=1e-4, rtol=1e-4)


def test_errors_name_the_file(tmp_path):
    reference = _hf_model("mistral")
    write_original(reference, "mistral", tmp_path)
    (tmp_path / "params.json").write_text(json.dumps({k: v for k, v in PARAMS.items() if k != "n_heads"}))
    with pytest.raises(lamina.CheckpointError, match="params.json: key 'n_heads' is missing"):
        lamina.AutoModelForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    (tmp_path / "consolidated.safetensors").unlink()
    with pytest.raises(lamina.CheckpointError, match="params.json without weights"):
        lamina.AutoModelForCausalLM.from_pretrained(tmp_path)
