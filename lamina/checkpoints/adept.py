"""Adept's Persimmon release (`model_optim_rng.pt` + `adept_vocab.model`) → an HF Persimmon directory.

Adept trained Persimmon with a Megatron-LM fork, so the weights are read like any Megatron
checkpoint (`lamina.checkpoints.megatron`, restricted unpickler, tensor-parallel ranks merged).
The fused `query_key_value` rows are interleaved per head, which is also the layout HF Persimmon
keeps, so the conversion is renaming:

    language_model.embedding.word_embeddings.*   → model.embed_tokens.*
    language_model.encoder.*  (self_attention.)  → model.*  (self_attn.)
    word_embeddings_for_head.*                   → lm_head.*

Sizes come from the tensors; the rotary settings, which the tensors do not hold, are Persimmon-8B's
unless given. The sentencepiece model is copied as `tokenizer.model` with a tokenizer config that
names Adept's `|ENDOFTEXT|` token and the Persimmon chat template.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from ..config import resolve_dtype
from ..errors import CheckpointError
from .megatron import (
    INTERLEAVED_QKV, add_converter_arguments, load_megatron_checkpoint, qkv_from_standard, save_converted,
)

logger = logging.getLogger("lamina")

TOKENIZER_FILE = "adept_vocab.model"
# |ENDOFTEXT| in Adept's vocabulary: the model's bos and eos
ENDOFTEXT_ID = 71013
ENDOFTEXT = "|ENDOFTEXT|"


def adept_to_persimmon_tensors(tensors: dict[str, torch.Tensor], num_heads: int, source: str) -> dict[str, torch.Tensor]:
    """Merged Adept tensors (dotted names, QKV rows in standard order) → HF Persimmon tensors."""
    out = {}
    for name, tensor in tensors.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # a buffer computed from the config
        if name.startswith("language_model.embedding.word_embeddings."):
            out["model.embed_tokens." + name.rsplit(".", 1)[1]] = tensor
        elif name.startswith("word_embeddings_for_head."):
            out["lm_head." + name.rsplit(".", 1)[1]] = tensor
        elif name.startswith("language_model.encoder."):
            local = name.removeprefix("language_model.encoder.").replace(".self_attention.", ".self_attn.")
            if "query_key_value" in local:
                tensor = qkv_from_standard(tensor, INTERLEAVED_QKV, num_heads)
            out["model." + local] = tensor
        else:
            raise CheckpointError(f"{source}: key {name!r} is not part of a Persimmon model")
    return out


def _find_tokenizer(src: Path) -> Path | None:
    for folder in (src if src.is_dir() else src.parent, *list(src.parents)[:3]):
        if (folder / TOKENIZER_FILE).is_file():
            return folder / TOKENIZER_FILE
    return None


def convert_adept_persimmon(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    tokenizer_model: str | os.PathLike | None = None,
    num_heads: int | None = None,
    rope_theta: float = 25000.0,
    partial_rotary_factor: float = 0.5,
    max_position_embeddings: int | None = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Convert Adept's Persimmon checkpoint at `src` (a `model_optim_rng.pt` or its folder) into an
    HF Persimmon directory `dst`.

    `tokenizer_model`: Adept's sentencepiece file (default: `adept_vocab.model` next to `src` or
    in a folder above it; skipped when there is none). `num_heads`: needed only when neither the
    training args nor the qk-layernorm size tell it. `dtype`: the output dtype (default: the
    checkpoint's). Returns `dst`.
    """
    from ..models.persimmon import PersimmonConfig, PersimmonForCausalLM
    from ..tokenizers.classes import PERSIMMON_CHAT_TEMPLATE

    src = Path(src)
    checkpoint = load_megatron_checkpoint(src)
    first = checkpoint.rank_tensors(0)
    words = first.get("language_model.embedding.word_embeddings.weight")
    if words is None:
        raise CheckpointError(f"{checkpoint.source}: missing key 'language_model.embedding.word_embeddings.weight'")
    hidden = words.shape[1]
    q_norm = next((t for k, t in first.items() if k.endswith("self_attention.q_layernorm.weight")), None)
    heads = num_heads or checkpoint.arg("num_attention_heads") or (hidden // q_norm.shape[0] if q_norm is not None else None)
    if heads is None:
        raise CheckpointError(
            f"{checkpoint.source}: the head count is not in the checkpoint (no training args, no qk layernorm); pass num_heads"
        )
    merged = checkpoint.merged_tensors(heads, qkv_version=INTERLEAVED_QKV)
    tensors = adept_to_persimmon_tensors(merged, heads, checkpoint.source)
    layers = {int(k.split(".")[2]) for k in tensors if k.startswith("model.layers.")}
    vocab = tensors["model.embed_tokens.weight"].shape[0]
    endoftext = ENDOFTEXT_ID if vocab > ENDOFTEXT_ID else None
    config = PersimmonConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=tensors["model.layers.0.mlp.dense_h_to_4h.weight"].shape[0],
        num_hidden_layers=len(layers),
        num_attention_heads=heads,
        max_position_embeddings=max_position_embeddings
        or checkpoint.arg("max_position_embeddings") or checkpoint.arg("seq_length") or 16384,
        layer_norm_eps=float(checkpoint.arg("layernorm_epsilon", 1e-5)),
        qk_layernorm=q_norm is not None,
        rope_theta=rope_theta,
        partial_rotary_factor=partial_rotary_factor,
        bos_token_id=endoftext,
        eos_token_id=endoftext,
        architectures=["PersimmonForCausalLM"],
    )
    dst = save_converted(PersimmonForCausalLM, config, tensors, dst, resolve_dtype(dtype) or words.dtype, max_shard_size)

    spm = Path(tokenizer_model) if tokenizer_model is not None else _find_tokenizer(src)
    if spm is None:
        logger.warning("%s: no %s found; the converted model has no tokenizer files", src, TOKENIZER_FILE)
        return dst
    if not spm.is_file():
        raise CheckpointError(f"tokenizer_model: {spm} is not a file")
    shutil.copyfile(spm, dst / "tokenizer.model")
    tokenizer_config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": ENDOFTEXT,
        "eos_token": ENDOFTEXT,
        "add_bos_token": True,
        "add_eos_token": False,
        "chat_template": PERSIMMON_CHAT_TEMPLATE,
        "model_max_length": config.max_position_embeddings,
    }
    (dst / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return dst


def cli_arguments(parser: argparse.ArgumentParser) -> None:
    """`lamina convert-adept-persimmon SRC DST [--tokenizer-model FILE] …`"""
    add_converter_arguments(parser)
    parser.add_argument("--tokenizer-model", default=None,
                        help=f"Adept's sentencepiece model (default: {TOKENIZER_FILE} next to or above SRC)")
    parser.add_argument("--rope-theta", type=float, default=25000.0, help="rotary base (default: 25000)")
    parser.add_argument("--partial-rotary-factor", type=float, default=0.5,
                        help="fraction of each head that rotates (default: 0.5)")
    parser.add_argument("--max-position-embeddings", type=int, default=None,
                        help="context length (default: the training args', else 16384)")


def run_cli(args: argparse.Namespace) -> int:
    dst = convert_adept_persimmon(
        args.source, args.destination, tokenizer_model=args.tokenizer_model, num_heads=args.num_heads,
        rope_theta=args.rope_theta, partial_rotary_factor=args.partial_rotary_factor,
        max_position_embeddings=args.max_position_embeddings, dtype=args.dtype, max_shard_size=args.max_shard_size,
    )
    print(f"wrote PersimmonForCausalLM to {dst}")
    return 0
