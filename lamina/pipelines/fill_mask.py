"""Fill-mask: the most likely tokens at each mask token of a text, as transformers' fill-mask
pipeline returns them, and the `lamina fill-mask MODEL TEXT` command.

torch is imported inside the functions: the command line imports this module to list its
commands, and `lamina --help` should stay quick.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..console import load_tokenizer
from ..errors import InputError, TokenizerError


def fill_mask(model: Any, tokenizer: Any, text: str | list[str], top_k: int = 5) -> list[Any]:
    """Top-`top_k` fillers of the mask token(s) in `text`.

    Each filler is `{"score": probability, "token": id, "token_str": decoded token, "sequence":
    the text with the mask replaced}`. One text with one mask gives a list of fillers; several
    masks give one list per mask (the other masks are kept in `sequence`); a list of texts gives
    one such result per text. `model` is any masked LM returning `.logits (batch, seq, vocab)`.
    """
    import torch
    if isinstance(text, list):
        return [fill_mask(model, tokenizer, item, top_k) for item in text]
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise TokenizerError(f"fill-mask: the tokenizer {type(tokenizer).__name__} has no mask_token")
    if top_k < 1:
        raise InputError(f"fill-mask: top_k must be at least 1, found {top_k}")
    encoded = tokenizer(text, return_tensors="pt")
    input_ids = encoded["input_ids"][0]
    positions = (input_ids == mask_id).nonzero().squeeze(-1)
    if positions.numel() == 0:
        raise InputError(f"fill-mask: no mask_token ({tokenizer.mask_token}) found in the input {text!r}")
    device = model.device
    with torch.no_grad():
        logits = model(**{k: v.to(device) for k, v in encoded.items()}).logits[0]
    probs = logits[positions].float().softmax(dim=-1)
    scores, token_ids = probs.topk(min(top_k, probs.shape[-1]))
    single = positions.numel() == 1
    pad_id = tokenizer.pad_token_id
    results = []
    for position, row_scores, row_ids in zip(positions.tolist(), scores.tolist(), token_ids.tolist()):
        row = []
        for score, token in zip(row_scores, row_ids):
            filled = input_ids.clone()
            filled[position] = token
            if pad_id is not None:
                filled = filled[filled != pad_id]
            # with several masks the others stay visible, so special tokens are kept
            sequence = tokenizer.decode(filled.tolist(), skip_special_tokens=single)
            row.append({"score": score, "token": token, "token_str": tokenizer.decode([token]), "sequence": sequence})
        results.append(row)
    return results[0] if single else results


def fill_mask_arguments(parser: argparse.ArgumentParser) -> None:
    """`lamina fill-mask` options."""
    parser.add_argument("model", metavar="MODEL", help="a masked LM: directory or Hub id")
    parser.add_argument("text", metavar="TEXT", help='text with the mask token, e.g. "Paris is the [MASK] of France."')
    parser.add_argument("--top-k", type=int, default=5, help="how many fillers to print per mask (default: 5)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="weights dtype (default: the checkpoint's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, … (default: cpu)")


def run_fill_mask(args: argparse.Namespace) -> int:
    """Print each mask's fillers, one per line: probability, token, the filled text."""
    from ..models.auto import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(args.model, dtype=args.dtype, device_map=args.device)
    results = fill_mask(model, load_tokenizer(args.model), args.text, args.top_k)
    per_mask = results if isinstance(results[0], list) else [results]
    for index, fillers in enumerate(per_mask, 1):
        if len(per_mask) > 1:
            print(f"mask {index}:")
        for filler in fillers:
            print(f"{filler['score']:.4f}\t{filler['token_str']}\t{filler['sequence']}")
    return 0
