"""Tiny synthetic Megatron-LM BERT checkpoints, shared by the converter tests and the script that
records transformers 4.46.3's conversion of them (scripts/record_megatron_bert_fixtures.py).

Only torch is needed, and the same seed gives the same tensors in both environments.
"""

from __future__ import annotations

import argparse

import torch

HIDDEN, HEADS, LAYERS, FFN, MAX_POSITIONS = 16, 4, 2, 24, 16
PADDED_VOCAB = 40  # a 37-token vocabulary padded the way Megatron pads to a multiple of 8 × ranks


def qkv_rows(standard: torch.Tensor, version: float, heads: int) -> torch.Tensor:
    """[all q; all k; all v] rows → the row order checkpoint `version` stores."""
    head_dim = standard.shape[0] // (3 * heads)
    rest = tuple(standard.shape[1:])
    split = standard.reshape(3, heads, head_dim, *rest)
    if version < 1.0:
        stored = split
    elif version < 2.0:
        stored = split.permute(1, 2, 0, *range(3, 3 + len(rest)))  # [heads, head_dim, 3]
    else:
        stored = split.permute(1, 0, 2, *range(3, 3 + len(rest)))  # [heads, 3, head_dim]
    return stored.reshape(standard.shape).contiguous()


def full_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """One whole model under Megatron's flat names, fused QKV rows in standard [q; k; v] order."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    weights = {
        "embedding.word_embeddings.weight": rand(PADDED_VOCAB, HIDDEN),
        "embedding.position_embeddings.weight": rand(MAX_POSITIONS, HIDDEN),
        "embedding.tokentype_embeddings.weight": rand(2, HIDDEN),
    }
    for i in range(LAYERS):
        layer = f"layers.{i}."
        weights.update({
            layer + "input_layernorm.weight": 1 + rand(HIDDEN), layer + "input_layernorm.bias": rand(HIDDEN),
            layer + "attention.query_key_value.weight": rand(3 * HIDDEN, HIDDEN),
            layer + "attention.query_key_value.bias": rand(3 * HIDDEN),
            layer + "attention.dense.weight": rand(HIDDEN, HIDDEN), layer + "attention.dense.bias": rand(HIDDEN),
            layer + "post_attention_layernorm.weight": 1 + rand(HIDDEN),
            layer + "post_attention_layernorm.bias": rand(HIDDEN),
            layer + "mlp.dense_h_to_4h.weight": rand(FFN, HIDDEN), layer + "mlp.dense_h_to_4h.bias": rand(FFN),
            layer + "mlp.dense_4h_to_h.weight": rand(HIDDEN, FFN), layer + "mlp.dense_4h_to_h.bias": rand(HIDDEN),
        })
    weights.update({
        "final_layernorm.weight": 1 + rand(HIDDEN), "final_layernorm.bias": rand(HIDDEN),
        "pooler.dense.weight": rand(HIDDEN, HIDDEN), "pooler.dense.bias": rand(HIDDEN),
        "lm_head.dense.weight": rand(HIDDEN, HIDDEN), "lm_head.dense.bias": rand(HIDDEN),
        "lm_head.layernorm.weight": 1 + rand(HIDDEN), "lm_head.layernorm.bias": rand(HIDDEN),
        "lm_head.bias": rand(PADDED_VOCAB),
        "binary_head.weight": rand(2, HIDDEN), "binary_head.bias": rand(2),
    })
    return weights


# how each tensor is split over tensor-parallel ranks (absent: replicated)
_SPLIT = {"word_embeddings.weight": 0, "dense_h_to_4h.weight": 0, "dense_h_to_4h.bias": 0,
          "attention.dense.weight": 1, "dense_4h_to_h.weight": 1, "lm_head.bias": 0}


def _shard(name: str, tensor: torch.Tensor, rank: int, ranks: int, version: float) -> torch.Tensor:
    if "query_key_value" in name:
        heads = HEADS // ranks
        q, k, v = (part.chunk(ranks, dim=0)[rank] for part in tensor.chunk(3, dim=0))
        return qkv_rows(torch.cat([q, k, v]), version, heads)
    dim = next((d for suffix, d in _SPLIT.items() if name.endswith(suffix)), None)
    return tensor if dim is None else tensor.chunk(ranks, dim=dim)[rank].contiguous()


def build_checkpoint(version: float = 3.0, ranks: int = 1, with_args: bool = True, seed: int = 0,
                     binary_head: bool = True) -> list[dict]:
    """The `model_optim_rng.pt` contents of each tensor-parallel rank, as Megatron-LM saves them.

    Versions ≥ 2 use Megatron's newer names (`encoder`, `self_attention`), older ones
    `transformer` and `attention`.
    """
    weights = full_weights(seed)
    new_names = version >= 2.0
    states = []
    for rank in range(ranks):
        shards = {name: _shard(name, t, rank, ranks, version) for name, t in weights.items()}
        stack: dict[str, torch.Tensor] = {}
        for name, t in shards.items():
            if name.startswith(("layers.", "final_layernorm")):
                stack[name.replace("attention.", "self_attention.") if new_names else name] = t
        language_model = {
            "embedding": {part: {"weight": shards[f"embedding.{part}.weight"]}
                          for part in ("word_embeddings", "position_embeddings", "tokentype_embeddings")},
            "encoder" if new_names else "transformer": stack,
            "pooler": {k.removeprefix("pooler."): v for k, v in shards.items() if k.startswith("pooler.")},
        }
        model = {
            "language_model": language_model,
            "lm_head": {k.removeprefix("lm_head."): v for k, v in shards.items() if k.startswith("lm_head.")},
        }
        if binary_head:
            model["binary_head"] = {k.removeprefix("binary_head."): v for k, v in shards.items()
                                    if k.startswith("binary_head.")}
        state = {"model": model, "checkpoint_version": version, "iteration": 1000}
        if with_args:
            state["args"] = argparse.Namespace(
                tokenizer_type="BertWordPieceLowerCase", padded_vocab_size=PADDED_VOCAB,
                max_position_embeddings=MAX_POSITIONS, hidden_size=HIDDEN, num_layers=LAYERS,
                num_attention_heads=HEADS, ffn_hidden_size=FFN, tensor_model_parallel_size=ranks,
            )
        states.append(state)
    return states
