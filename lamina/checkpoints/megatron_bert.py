"""Megatron-LM BERT checkpoints (NVIDIA's NGC `megatron-bert-*-345m` zips and training folders) →
a transformers MegatronBERT directory.

Reading goes through `megatron.load_megatron_checkpoint` (restricted unpickler, every layout,
tensor-parallel merge, fused QKV rows put in one order whatever `checkpoint_version`). The sizes
come from the checkpoint: the training `args` when present, otherwise the tensors' shapes, so the
cased (28996 → 29056 padded) and uncased (30522 → 30592) vocabularies need no flag. The model is
then built with lamina's `MegatronBertForPreTraining` (or `…ForMaskedLM` when the checkpoint has
no next-sentence head), which checks every key and shape, and saved with `save_pretrained`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..config import resolve_dtype
from ..errors import CheckpointError
from .megatron import MegatronCheckpoint, add_converter_arguments, load_megatron_checkpoint, save_converted

# Megatron splits the MLM output bias over tensor-parallel ranks with the vocabulary
BERT_SPLIT_DIMS = {"lm_head.bias": 0}

_LAYER = re.compile(r"language_model\.(?:transformer|encoder)\.layers\.(\d+)\.(.+)$")
# layer-relative Megatron names → transformers names (after `bert.encoder.layer.N.`)
_LAYER_NAMES = {
    "input_layernorm": "attention.ln",
    "attention.dense": "attention.output.dense",
    "self_attention.dense": "attention.output.dense",
    "post_attention_layernorm": "ln",
    "mlp.dense_h_to_4h": "intermediate.dense",
    "mlp.dense_4h_to_h": "output.dense",
}
_OTHER_NAMES = {
    "language_model.embedding.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
    "language_model.embedding.position_embeddings.weight": "bert.embeddings.position_embeddings.weight",
    "language_model.embedding.tokentype_embeddings.weight": "bert.embeddings.token_type_embeddings.weight",
    "language_model.transformer.final_layernorm.weight": "bert.encoder.ln.weight",
    "language_model.transformer.final_layernorm.bias": "bert.encoder.ln.bias",
    "language_model.encoder.final_layernorm.weight": "bert.encoder.ln.weight",
    "language_model.encoder.final_layernorm.bias": "bert.encoder.ln.bias",
    "language_model.pooler.dense.weight": "bert.pooler.dense.weight",
    "language_model.pooler.dense.bias": "bert.pooler.dense.bias",
    "lm_head.dense.weight": "cls.predictions.transform.dense.weight",
    "lm_head.dense.bias": "cls.predictions.transform.dense.bias",
    "lm_head.layernorm.weight": "cls.predictions.transform.LayerNorm.weight",
    "lm_head.layernorm.bias": "cls.predictions.transform.LayerNorm.bias",
    "lm_head.bias": "cls.predictions.bias",
    "binary_head.weight": "cls.seq_relationship.weight",
    "binary_head.bias": "cls.seq_relationship.bias",
}
WORD_EMBEDDINGS = "language_model.embedding.word_embeddings.weight"


def megatron_bert_config(checkpoint: MegatronCheckpoint, num_heads: int | None = None) -> dict[str, Any]:
    """The transformers config of a Megatron BERT checkpoint, from its `args` or, without them, the
    shapes of rank 0's tensors (then the head count is `num_heads`, or one per 64 dims)."""
    tensors = checkpoint.rank_tensors(0)
    ranks = len(checkpoint.ranks)
    for name in (WORD_EMBEDDINGS, "language_model.embedding.position_embeddings.weight", "lm_head.bias"):
        if name not in tensors:
            raise CheckpointError(f"{checkpoint.source}: missing key {name!r}; is this a Megatron BERT checkpoint?")
    vocab_rows, hidden = tensors[WORD_EMBEDDINGS].shape
    layers = {int(m.group(1)) for m in map(_LAYER.match, tensors) if m}
    intermediate = next((t.shape[0] * ranks for n, t in tensors.items() if n.endswith("mlp.dense_h_to_4h.weight")), None)
    types = tensors.get("language_model.embedding.tokentype_embeddings.weight")
    found = dict(
        vocab_size=tensors["lm_head.bias"].shape[0] * ranks,
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        intermediate_size=intermediate,
        max_position_embeddings=tensors["language_model.embedding.position_embeddings.weight"].shape[0],
        type_vocab_size=types.shape[0] if types is not None else 0,
    )
    heads = num_heads or checkpoint.arg("num_attention_heads") or hidden // 64
    config = dict(found, num_attention_heads=heads)
    if checkpoint.args is not None:
        from_args = dict(
            vocab_size=checkpoint.arg("padded_vocab_size"),
            hidden_size=checkpoint.arg("hidden_size"),
            num_hidden_layers=checkpoint.arg("num_layers"),
            max_position_embeddings=checkpoint.arg("max_position_embeddings"),
            intermediate_size=checkpoint.arg("ffn_hidden_size") or 4 * checkpoint.arg("hidden_size", hidden),
        )
        for key, value in from_args.items():
            if value is not None and value != found[key]:
                raise CheckpointError(
                    f"{checkpoint.source}: the training args give {key}={value}, the tensors {found[key]}"
                )
        tokenizer_type = checkpoint.arg("tokenizer_type")
        if tokenizer_type is not None:
            config["tokenizer_type"] = tokenizer_type
    if vocab_rows * ranks != config["vocab_size"]:
        raise CheckpointError(
            f"{checkpoint.source}: word embeddings have {vocab_rows * ranks} rows, the MLM bias {config['vocab_size']}"
        )
    if hidden % heads:
        raise CheckpointError(f"{checkpoint.source}: hidden size {hidden} does not split into {heads} heads")
    return config


def megatron_bert_tensors(checkpoint: MegatronCheckpoint, num_heads: int) -> dict[str, torch.Tensor]:
    """All ranks merged, under transformers' MegatronBERT names (q/k/v split from the fused rows)."""
    merged = checkpoint.merged_tensors(num_heads, split_dims=BERT_SPLIT_DIMS)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in merged.items():
        match = _LAYER.match(name)
        if match is None:
            if name not in _OTHER_NAMES:
                raise CheckpointError(f"{checkpoint.source}: unexpected key {name!r} in a Megatron BERT checkpoint")
            out[_OTHER_NAMES[name]] = tensor
            continue
        prefix = f"bert.encoder.layer.{match.group(1)}."
        module, _, kind = match.group(2).rpartition(".")
        if module.endswith("query_key_value"):
            for part, piece in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                out[f"{prefix}attention.self.{part}.{kind}"] = piece
        elif module in _LAYER_NAMES:
            out[f"{prefix}{_LAYER_NAMES[module]}.{kind}"] = tensor
        else:
            raise CheckpointError(f"{checkpoint.source}: unexpected key {name!r} in a Megatron BERT checkpoint")
    return out


def convert_megatron_bert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    num_heads: int | None = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Convert the Megatron BERT checkpoint at `src` (NGC zip, `model_optim_rng.pt`, or a folder of
    either layout) into a transformers directory `dst`; returns it. `num_heads` is needed only when
    the checkpoint has no training args (default then: one head per 64 dims, as NVIDIA's 345M
    releases have). `dtype`: the output dtype (default: the checkpoint's)."""
    from ..models.megatron_bert import MegatronBertConfig, MegatronBertForMaskedLM, MegatronBertForPreTraining

    checkpoint = load_megatron_checkpoint(src)
    config_dict = megatron_bert_config(checkpoint, num_heads)
    tensors = megatron_bert_tensors(checkpoint, config_dict["num_attention_heads"])
    model_class = MegatronBertForPreTraining
    if "cls.seq_relationship.weight" not in tensors:
        # trained without the next-sentence head: a masked LM, which has no pooler either
        model_class = MegatronBertForMaskedLM
        tensors = {k: v for k, v in tensors.items() if not k.startswith("bert.pooler.")}
    stored = next(iter(tensors.values())).dtype
    return save_converted(model_class, MegatronBertConfig(**config_dict), tensors, dst,
                          resolve_dtype(dtype) or stored, max_shard_size)


def cli_arguments(parser: argparse.ArgumentParser) -> None:
    """`lamina convert-megatron-bert SRC DST [--num-heads N] [--dtype …] [--max-shard-size …]`"""
    add_converter_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    dst = convert_megatron_bert(args.source, args.destination, num_heads=args.num_heads, dtype=args.dtype,
                                max_shard_size=args.max_shard_size)
    config = json.loads((dst / "config.json").read_text())
    print(f"wrote {config['architectures'][0]} (vocabulary {config['vocab_size']}) to {dst}")
    return 0
