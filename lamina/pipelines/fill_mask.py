"""Fill-mask (`fill-mask`): the most likely tokens at each mask token of a text, as
transformers' fill-mask pipeline returns them, and the `lamina fill-mask MODEL TEXT` command."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..console import load_tokenizer
from ..errors import InputError, TokenizerError
from .base import Pipeline, check_unknown


class FillMaskPipeline(Pipeline):
    """`pipe(text_or_texts, top_k=5, targets=None)`: the likeliest fillers of each mask token.

    Each filler is `{"score": probability, "token": id, "token_str": decoded token, "sequence":
    the text with the mask replaced}`. A text with one mask gives a list of fillers; several
    masks give one list per mask (the other masks are kept in `sequence`); a list of texts gives
    one such result per text (a list of one text, that text's result, as in transformers).
    `targets` limits the fillers to those tokens (a word not in the vocabulary stands for its
    first token). `model` is any masked LM returning `.logits (batch, seq, vocab)`.
    """

    task = "fill-mask"

    def __call__(self, inputs: str | list[str], **call: Any) -> Any:
        options, batch_size = self._options(call)
        if isinstance(inputs, list):
            results = self.run(inputs, options, batch_size)
            return results[0] if len(results) == 1 else results
        return self.run([inputs], options, batch_size)[0]

    def parameters(self, top_k: int = 5, targets: str | list[str] | None = None, tokenizer_kwargs: dict[str, Any] | None = None, **unknown: Any) -> dict[str, Any]:
        check_unknown(self.task, unknown)
        if self.tokenizer.mask_token_id is None:
            raise TokenizerError(f"fill-mask: the tokenizer {type(self.tokenizer).__name__} has no mask_token")
        if top_k < 1:
            raise InputError(f"fill-mask: top_k must be at least 1, found {top_k}")
        target_ids = None if targets is None else self._target_ids([targets] if isinstance(targets, str) else targets)
        return {"top_k": top_k, "targets": target_ids, "tokenizer": tokenizer_kwargs or {}}

    def _target_ids(self, targets: list[str]) -> list[int]:
        vocab = self.tokenizer.get_vocab()
        ids = []
        for target in targets:
            token_id = vocab.get(target)
            if token_id is None:
                encoded = self.tokenizer.encode(target, add_special_tokens=False)
                if not encoded:
                    continue
                token_id = encoded[0]
            ids.append(token_id)
        if not ids:
            raise InputError(f"fill-mask: none of the targets {targets} gives a token")
        return sorted(set(ids))

    def preprocess(self, item: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        encoded = self.tokenizer(item, return_tensors="pt", **params["tokenizer"])
        if not bool((encoded["input_ids"] == self.tokenizer.mask_token_id).any()):
            raise InputError(f"fill-mask: no mask_token ({self.tokenizer.mask_token}) found in the input {item!r}")
        return [{"tensors": dict(encoded)}]

    def postprocess(self, chunks: list[dict[str, Any]], params: dict[str, Any]) -> list[Any]:
        input_ids = chunks[0]["tensors"]["input_ids"][0]
        positions = (input_ids == self.tokenizer.mask_token_id).nonzero().squeeze(-1)
        probs = chunks[0]["outputs"]["logits"][0, positions].float().softmax(dim=-1)
        targets = params["targets"]
        if targets is not None:
            probs = probs[..., torch.tensor(targets)]
        scores, token_ids = probs.topk(min(params["top_k"], probs.shape[-1]))
        single = positions.numel() == 1
        pad_id = self.tokenizer.pad_token_id
        results = []
        for position, row_scores, row_ids in zip(positions.tolist(), scores.tolist(), token_ids.tolist()):
            row = []
            for score, token in zip(row_scores, row_ids):
                token = token if targets is None else targets[token]
                filled = input_ids.clone()
                filled[position] = token
                if pad_id is not None:
                    filled = filled[filled != pad_id]
                # with several masks the others stay visible, so special tokens are kept
                sequence = self.tokenizer.decode(filled.tolist(), skip_special_tokens=single)
                row.append({"score": score, "token": token, "token_str": self.tokenizer.decode([token]), "sequence": sequence})
            results.append(row)
        return results[0] if single else results


def fill_mask(model: Any, tokenizer: Any, text: str | list[str], top_k: int = 5) -> list[Any]:
    """`FillMaskPipeline(model, tokenizer)(text, top_k=top_k)`, except that a list of texts always
    gives one result per text."""
    pipe = FillMaskPipeline(model, tokenizer)
    if isinstance(text, list):
        return [pipe(item, top_k=top_k) for item in text]
    return pipe(text, top_k=top_k)


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
