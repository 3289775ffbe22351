"""Megatron-LM GPT-2 checkpoints → a Hugging Face GPT-2 directory.

Reads the NGC zip, a `model_optim_rng.pt`, or a checkpoint folder of one or more tensor-parallel
ranks (`lamina.checkpoints.megatron`), puts the fused QKV rows of any checkpoint version in
GPT-2's order, renames Megatron's modules to GPT-2's, and writes the result through
`GPT2LMHeadModel`, so every key and shape is checked on the way and the files are exactly what
`save_pretrained` writes. Sizes are read from the tensors; the head count, which shapes do not
tell, from the training arguments when the checkpoint has them.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

import torch

from ..config import resolve_dtype
from ..errors import CheckpointError
from .megatron import MegatronCheckpoint, add_converter_arguments, load_megatron_checkpoint, save_converted

logger = logging.getLogger("lamina")

# NVIDIA's released Megatron-GPT2 345M has 16 heads; its oldest files carry no training args
RELEASE_NUM_HEADS = 16
GPT2_EOS = 50256
GPT2_VOCAB = 50257  # the GPT-2 BPE vocabulary, which Megatron pads (to 50304 for one rank)
WORDS = "language_model.embedding.word_embeddings.weight"

_LAYER = re.compile(r"layers\.(\d+)\.(.+)\.(weight|bias)$")
# Megatron module → (GPT-2 module, whether the weight is stored transposed as a Conv1D)
_LAYER_MODULES = {
    "input_layernorm": ("ln_1", False),
    "post_attention_layernorm": ("ln_2", False),
    "attention.query_key_value": ("attn.c_attn", True),
    "self_attention.query_key_value": ("attn.c_attn", True),
    "attention.dense": ("attn.c_proj", True),
    "self_attention.dense": ("attn.c_proj", True),
    "mlp.dense_h_to_4h": ("mlp.c_fc", True),
    "mlp.dense_4h_to_h": ("mlp.c_proj", True),
}


def _activation(checkpoint: MegatronCheckpoint) -> str:
    """The GELU Megatron trained with: its fused bias-GELU is the tanh form of `gelu_fast`."""
    if checkpoint.args is None:
        return "gelu_new"  # what the earliest releases used
    if checkpoint.arg("bias_gelu_fusion", False):
        return "gelu_fast"
    return "gelu_new" if checkpoint.arg("openai_gelu", False) else "gelu"


def megatron_to_gpt2_tensors(
    tensors: dict[str, torch.Tensor], vocab_size: int | None, source: str
) -> dict[str, torch.Tensor]:
    """Merged Megatron tensors (dotted names, QKV in standard order) → GPT-2 checkpoint tensors.

    `vocab_size` trims the (padded) embedding rows; None keeps them all.
    """
    prefix = "language_model."
    encoder = next((p for p in ("transformer.", "encoder.") if any(k.startswith(prefix + p) for k in tensors)), None)
    if encoder is None:
        raise CheckpointError(f"{source}: no language_model.transformer or language_model.encoder weights")
    words = _take(tensors, WORDS, source)
    if vocab_size is not None:
        if vocab_size > words.shape[0]:
            raise CheckpointError(
                f"{source}: vocab_size {vocab_size} is larger than the checkpoint's {words.shape[0]} embedding rows"
            )
        words = words[:vocab_size]
    out = {
        "transformer.wte.weight": words,
        "transformer.wpe.weight": _take(tensors, prefix + "embedding.position_embeddings.weight", source),
    }
    for name, tensor in tensors.items():
        if not name.startswith(prefix + encoder):
            raise CheckpointError(f"{source}: key {name!r} is not part of a GPT-2 model")
        local = name[len(prefix + encoder) :]
        final = re.fullmatch(r"final_(?:layernorm|norm)\.(weight|bias)", local)
        if final:
            out[f"transformer.ln_f.{final.group(1)}"] = tensor
            continue
        match = _LAYER.fullmatch(local)
        if match is None or match.group(2) not in _LAYER_MODULES:
            raise CheckpointError(f"{source}: key {name!r} is not part of a GPT-2 model")
        layer, module, kind = match.groups()
        target, conv1d = _LAYER_MODULES[module]
        out[f"transformer.h.{layer}.{target}.{kind}"] = tensor.t() if conv1d and kind == "weight" else tensor
    return out


def _take(tensors: dict[str, torch.Tensor], name: str, source: str) -> torch.Tensor:
    if name not in tensors:
        raise CheckpointError(f"{source}: missing key {name!r}")
    return tensors.pop(name)


def convert_megatron_gpt2(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    vocab_size: int | None | str = "auto",
    num_heads: int | None = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Convert a Megatron-LM GPT-2 checkpoint at `src` into an HF GPT-2 directory `dst`.

    `vocab_size`: keep the first rows of the embedding (e.g. 50257 of Megatron's 50304 padded
    rows); None keeps them all; "auto" trims a GPT-2 BPE vocabulary to its 50257 tokens and keeps
    any other. `num_heads`: needed only when the checkpoint has no training
    args (defaults then to NVIDIA's 345M release). `dtype`: the output dtype (default: the
    checkpoint's). Returns `dst`.
    """
    from ..models.gpt2 import GPT2Config, GPT2LMHeadModel

    checkpoint = load_megatron_checkpoint(src)
    heads = num_heads or checkpoint.arg("num_attention_heads")
    if heads is None:
        logger.warning("%s: no training args and no num_heads given; assuming %d heads (Megatron-GPT2 345M)",
                       checkpoint.source, RELEASE_NUM_HEADS)
        heads = RELEASE_NUM_HEADS
    merged = checkpoint.merged_tensors(heads)
    if "language_model.output_layer.weight" in merged:
        raise CheckpointError(
            f"{checkpoint.source}: the output layer is not tied to the word embeddings, which GPT-2 cannot express"
        )
    if vocab_size == "auto":
        rows = merged[WORDS].shape[0] if WORDS in merged else 0
        gpt2_bpe = checkpoint.arg("tokenizer_type", "GPT2BPETokenizer") == "GPT2BPETokenizer"
        vocab_size = GPT2_VOCAB if gpt2_bpe and rows >= GPT2_VOCAB else None
    tensors = megatron_to_gpt2_tensors(merged, vocab_size, checkpoint.source)
    words = tensors["transformer.wte.weight"]
    layers = {int(k.split(".")[2]) for k in tensors if k.startswith("transformer.h.")}
    if layers != set(range(len(layers))):
        raise CheckpointError(f"{checkpoint.source}: layer numbers {sorted(layers)} are not 0..{len(layers) - 1}")
    config = GPT2Config(
        vocab_size=words.shape[0],
        n_positions=tensors["transformer.wpe.weight"].shape[0],
        n_embd=words.shape[1],
        n_layer=len(layers),
        n_head=heads,
        n_inner=tensors["transformer.h.0.mlp.c_fc.weight"].shape[1],
        activation_function=_activation(checkpoint),
        layer_norm_epsilon=float(checkpoint.arg("layernorm_epsilon", 1e-5)),
        bos_token_id=GPT2_EOS,
        eos_token_id=GPT2_EOS,
        architectures=["GPT2LMHeadModel"],
    )
    if checkpoint.arg("tokenizer_type", "GPT2BPETokenizer") == "GPT2BPETokenizer":
        config.tokenizer_class = "GPT2TokenizerFast"
    return save_converted(GPT2LMHeadModel, config, tensors, dst, resolve_dtype(dtype) or words.dtype, max_shard_size)


def _vocab_choice(text: str) -> int | None | str:
    if text in ("auto", "keep"):
        return None if text == "keep" else text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 'auto', 'keep' or a positive number, found {text!r}")


def cli_arguments(parser: argparse.ArgumentParser) -> None:
    """`lamina convert-megatron-gpt2 SRC DST [--vocab-size auto|keep|N] …`"""
    add_converter_arguments(parser)
    parser.add_argument("--vocab-size", type=_vocab_choice, default="auto",
                        help="'auto' (default) trims GPT-2 BPE padding to 50257 rows, 'keep' keeps every row, "
                             "a number keeps that many")


def run_cli(args: argparse.Namespace) -> int:
    dst = convert_megatron_gpt2(args.source, args.destination, vocab_size=args.vocab_size, num_heads=args.num_heads,
                                dtype=args.dtype, max_shard_size=args.max_shard_size)
    print(f"wrote GPT2LMHeadModel to {dst}")
    return 0
