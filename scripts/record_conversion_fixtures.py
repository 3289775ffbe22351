"""Record what transformers 4.46.3's own conversion scripts make of small synthetic checkpoints, so
tests can check that `lamina convert` writes the same tensors without that environment.

Run with the environment that has transformers==4.46.3 (and flatdict, which the Persimmon script
imports):

    /work/venv4/bin/python scripts/record_conversion_fixtures.py

For each case it writes under tests/fixtures/conversion/<case>/ the synthetic input
(`model_optim_rng.pt`, in the nested layout Megatron-LM / Adept save) and `reference.safetensors`,
the tensors the script's conversion function produces from it (Megatron GPT-2: its
`convert_megatron_checkpoint`, as its `main` calls it; Persimmon: its `rename_state_dict` over the
flattened model, loaded into `PersimmonForCausalLM` cast to bfloat16 and saved, as its
`convert_persimmon_checkpoint` does for the full-size model). tests/fixtures/conversion/manifest.json
lists the cases with the arguments lamina's converters get for the same result.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import flatdict
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, PersimmonConfig, PersimmonForCausalLM
from transformers.models.megatron_gpt2.convert_megatron_gpt2_checkpoint import convert_megatron_checkpoint
from transformers.models.persimmon.convert_persimmon_weights_to_hf import rename_state_dict

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "conversion"
HIDDEN, LAYERS, HEADS, POSITIONS, PADDED_VOCAB = 16, 2, 4, 16, 64


def _random(generator: torch.Generator, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator).to(dtype)


def megatron_gpt2_state(seed: int, version: float | None, with_args: bool, old_names: bool) -> dict:
    """A one-rank Megatron GPT-2 checkpoint; QKV rows are random, so their order is whatever the
    version says."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float16
    attention = "attention" if old_names else "self_attention"
    layers = {}
    for i in range(LAYERS):
        shapes = {
            "input_layernorm.weight": (HIDDEN,), "input_layernorm.bias": (HIDDEN,),
            f"{attention}.query_key_value.weight": (3 * HIDDEN, HIDDEN), f"{attention}.query_key_value.bias": (3 * HIDDEN,),
            f"{attention}.dense.weight": (HIDDEN, HIDDEN), f"{attention}.dense.bias": (HIDDEN,),
            "post_attention_layernorm.weight": (HIDDEN,), "post_attention_layernorm.bias": (HIDDEN,),
            "mlp.dense_h_to_4h.weight": (4 * HIDDEN, HIDDEN), "mlp.dense_h_to_4h.bias": (4 * HIDDEN,),
            "mlp.dense_4h_to_h.weight": (HIDDEN, 4 * HIDDEN), "mlp.dense_4h_to_h.bias": (HIDDEN,),
        }
        layers.update({f"layers.{i}.{name}": _random(g, dtype, *shape) for name, shape in shapes.items()})
    layers["final_layernorm.weight"] = _random(g, dtype, HIDDEN)
    layers["final_layernorm.bias"] = _random(g, dtype, HIDDEN)
    language_model = {
        "embedding": {
            "word_embeddings": {"weight": _random(g, dtype, PADDED_VOCAB, HIDDEN)},
            "position_embeddings": {"weight": _random(g, dtype, POSITIONS, HIDDEN)},
        },
        "transformer" if old_names else "encoder": layers,
    }
    state: dict = {"model": {"language_model": language_model}, "iteration": 1000}
    if version is not None:
        state["checkpoint_version"] = version
    if with_args:
        state["args"] = argparse.Namespace(
            padded_vocab_size=PADDED_VOCAB, max_position_embeddings=POSITIONS, hidden_size=HIDDEN, num_layers=LAYERS,
            num_attention_heads=HEADS, ffn_hidden_size=4 * HIDDEN, bias_gelu_fusion=False, openai_gelu=False,
            tokenizer_type="GPT2BPETokenizer",
        )
    return state


def adept_persimmon_state(seed: int) -> dict:
    """A one-rank Adept Persimmon checkpoint (fp32; the script casts to bfloat16)."""
    g = torch.Generator().manual_seed(seed)
    head_dim, inner = HIDDEN // HEADS, 3 * HIDDEN
    encoder = {}
    for i in range(LAYERS):
        shapes = {
            "input_layernorm.weight": (HIDDEN,), "input_layernorm.bias": (HIDDEN,),
            "self_attention.query_key_value.weight": (3 * HIDDEN, HIDDEN),
            "self_attention.query_key_value.bias": (3 * HIDDEN,),
            "self_attention.dense.weight": (HIDDEN, HIDDEN), "self_attention.dense.bias": (HIDDEN,),
            "self_attention.q_layernorm.weight": (head_dim,), "self_attention.q_layernorm.bias": (head_dim,),
            "self_attention.k_layernorm.weight": (head_dim,), "self_attention.k_layernorm.bias": (head_dim,),
            "post_attention_layernorm.weight": (HIDDEN,), "post_attention_layernorm.bias": (HIDDEN,),
            "mlp.dense_h_to_4h.weight": (inner, HIDDEN), "mlp.dense_h_to_4h.bias": (inner,),
            "mlp.dense_4h_to_h.weight": (HIDDEN, inner), "mlp.dense_4h_to_h.bias": (HIDDEN,),
        }
        encoder.update({f"layers.{i}.{name}": _random(g, torch.float32, *shape) for name, shape in shapes.items()})
        encoder[f"layers.{i}.self_attention.rotary_emb.inv_freq"] = torch.ones(head_dim // 4)
    encoder["final_layernorm.weight"] = _random(g, torch.float32, HIDDEN)
    encoder["final_layernorm.bias"] = _random(g, torch.float32, HIDDEN)
    model = {
        "language_model": {"embedding": {"word_embeddings": {"weight": _random(g, torch.float32, PADDED_VOCAB, HIDDEN)}},
                           "encoder": encoder},
        "word_embeddings_for_head": {"weight": _random(g, torch.float32, PADDED_VOCAB, HIDDEN)},
    }
    return {"model": model, "checkpoint_version": 3.0,
            "args": argparse.Namespace(num_attention_heads=HEADS, seq_length=POSITIONS)}


def record_megatron(name: str, state: dict, trim_to: int | None) -> dict:
    config = GPT2Config(vocab_size=trim_to or PADDED_VOCAB, n_positions=POSITIONS, n_embd=HIDDEN, n_layer=LAYERS,
                        n_head=HEADS, n_inner=4 * HIDDEN)
    converted = convert_megatron_checkpoint(None, state, config)
    folder = OUT / name
    folder.mkdir(parents=True)
    torch.save(state, folder / "model_optim_rng.pt")
    save_file({k: v.clone().contiguous() for k, v in converted.items()}, folder / "reference.safetensors")
    kwargs = {} if "args" in state else {"vocab_size": trim_to, "num_heads": HEADS}
    reference_config = {k: getattr(config, k) for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner")}
    return {"name": name, "kind": "megatron_gpt2", "input": f"{name}/model_optim_rng.pt",
            "reference": f"{name}/reference.safetensors", "lamina_kwargs": kwargs, "reference_config": reference_config}


def record_adept(name: str, state: dict) -> dict:
    config = PersimmonConfig(vocab_size=PADDED_VOCAB, hidden_size=HIDDEN, intermediate_size=3 * HIDDEN,
                             num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=POSITIONS)
    model = PersimmonForCausalLM(config).to(torch.bfloat16)
    model.load_state_dict(rename_state_dict(flatdict.FlatDict(state["model"], ".")))
    folder = OUT / name
    folder.mkdir(parents=True)
    torch.save(state, folder / "model_optim_rng.pt")
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        save_file(load_file(Path(tmp) / "model.safetensors"), folder / "reference.safetensors")
    return {"name": name, "kind": "adept_persimmon", "input": f"{name}/model_optim_rng.pt",
            "reference": f"{name}/reference.safetensors", "lamina_kwargs": {"dtype": "bfloat16"}}


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    cases = [
        record_megatron("megatron_gpt2_v0_no_args", megatron_gpt2_state(1, None, False, old_names=True), trim_to=50),
        record_megatron("megatron_gpt2_v1_args", megatron_gpt2_state(2, 1.0, True, old_names=False), trim_to=None),
        record_megatron("megatron_gpt2_v3_args", megatron_gpt2_state(3, 3.0, True, old_names=False), trim_to=None),
        record_adept("adept_persimmon", adept_persimmon_state(4)),
    ]
    (OUT / "manifest.json").write_text(json.dumps(cases, indent=2) + "\n")
    print(f"recorded {len(cases)} cases in {OUT}")


if __name__ == "__main__":
    main()
