"""Assisted decoding on the default model (SmolLM2-135M-Instruct): the float32 model as the target,
its int4 copy (lamina's kernels, the file's own 4-bit values) as the draft. Greedy tokens per second
of plain `generate` against `generate(assistant_model=draft)`, in alternating rounds; checks the
tokens are the same. `python bench/bench_assisted.py [--tokens N] [--rounds R]`."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lamina
from lamina.cli import default_model
from lamina.quantization.config import decoding_config

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works, step by step.",
    "List ten facts about the planet Mars.",
]


def _timed(model, ids, **settings) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = model.generate(ids, do_sample=False, **settings)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--draft-tokens", type=int, default=8)
    args = parser.parse_args()
    path = default_model()
    target = lamina.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    draft = lamina.AutoModelForCausalLM.from_pretrained(path, quantization_config=decoding_config("int4"))
    tokenizer = lamina.AutoTokenizer.from_pretrained(path)
    settings = dict(max_new_tokens=args.tokens, eos_token_id=None, disable_compile=True)
    rates: dict[str, list[float]] = {"greedy": [], "assisted": [], "draft alone": []}
    for _ in range(args.rounds):
        for prompt in PROMPTS:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, return_tensors="pt").input_ids
            greedy, plain = _timed(target, ids, **settings)
            assisted, helped = _timed(target, ids, assistant_model=draft, num_assistant_tokens=args.draft_tokens,
                                      **settings)
            drafted, alone = _timed(draft, ids, **settings)
            if not torch.equal(greedy, assisted):
                raise SystemExit("assisted decoding changed the greedy tokens")
            new = greedy.shape[1] - ids.shape[1]
            agree = int((drafted[0, ids.shape[1]:] == greedy[0, ids.shape[1]:]).cumprod(0).sum())
            rates["greedy"].append(new / plain)
            rates["assisted"].append(new / helped)
            rates["draft alone"].append(new / alone)
            print(f"{prompt[:40]!r}: greedy {new / plain:.1f} tok/s, assisted {new / helped:.1f} tok/s, "
                  f"int4 draft alone {new / alone:.1f} tok/s, draft's greedy run agrees for {agree} tokens")
    for name, values in rates.items():
        print(f"{name}: median {statistics.median(values):.1f} tok/s over {len(values)} runs")


if __name__ == "__main__":
    main()
