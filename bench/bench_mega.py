"""MEGA benchmark: constant-cost decoding and linear chunked forward passes.

    python bench/bench_mega.py            # prints a Markdown section for bench/RESULTS.md
    python bench/bench_mega.py --quick    # smaller lengths, for a smoke run

1. Decoding: one token at a time through the cache from positions 500 … 4,000. With chunking
   the EMA is a recurrence (O(1) in the position) and attention sees at most one chunk, so the
   time per token should be flat: token 4,000 within 20% of token 500. Without chunking
   attention covers every earlier token, so its time grows with the position.
2. Forward passes over whole sequences: with chunking, time and the memory the pass adds should
   grow linearly with the length (ratios per doubling ≈ 2); without, attention is quadratic.
   Time is CPU time (one thread), median of 3 passes; memory is the growth of the process's peak
   resident set during the passes, measured in a fresh subprocess per length (CPU has no
   allocator statistics).

The model is random (weights do not change the cost): hidden 256, 4 layers, shared size 64,
intermediate 512, EMA size 16, chunks of 128. Torch runs on one thread so that timings from a
shared machine stay comparable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lamina import MegaConfig, MegaForCausalLM

CHUNK = 128


def build(chunking: bool) -> MegaForCausalLM:
    torch.manual_seed(0)
    config = MegaConfig(
        vocab_size=1000, hidden_size=256, num_hidden_layers=4, intermediate_size=512, ema_projection_size=16,
        shared_representation_size=64, nffn_hidden_size=512, max_positions=8192, is_decoder=True,
        bidirectional=False, use_chunking=chunking, chunk_size=CHUNK if chunking else -1,
    )
    return MegaForCausalLM(config).eval()


def decode_step_times(chunking: bool, positions: list[int], steps: int) -> dict[int, float]:
    """Median seconds per decoded token starting at each of `positions`.

    One cache per position is filled by a prefill through the cache (exact, see the tests), then
    the caches take single decoding steps in turn, so that load on a shared machine falls on
    every position alike.
    """
    model = build(chunking)
    tokens = torch.randint(3, 1000, (1, max(positions) + steps))
    times: dict[int, list[float]] = {p: [] for p in positions}
    with torch.no_grad():
        caches = {p: model(tokens[:, :p], use_cache=True, logits_to_keep=1).past_key_values for p in positions}
        for step in range(steps):
            for position in positions:
                token = tokens[:, position + step:position + step + 1]
                start = time.perf_counter()
                model(token, past_key_values=caches[position], use_cache=True)
                times[position].append(time.perf_counter() - start)
    return {p: statistics.median(t) for p, t in times.items()}


def peak_resident_mib() -> float:
    """This process's peak resident set (VmHWM). Not `ru_maxrss`: Linux carries that across `exec`,
    so a subprocess would start from its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the memory figures need Linux")


def forward_once(chunking: bool, length: int) -> dict[str, float]:
    """Run in a subprocess: one forward over `length` tokens; time and peak-RSS growth."""
    model = build(chunking)
    tokens = torch.randint(3, 1000, (1, length))
    with torch.no_grad():
        model(tokens[:, :CHUNK], use_cache=False)  # warm up kernels before taking the baseline
        baseline = peak_resident_mib()
        timings = []
        for _ in range(3):
            start = time.process_time()  # CPU time: on one thread, the work done, whatever else runs
            model(tokens, use_cache=False, logits_to_keep=1)
            timings.append(time.process_time() - start)
        peak = peak_resident_mib()
    return {"seconds": statistics.median(timings), "added_mib": peak - baseline}


def forward_in_subprocess(chunking: bool, length: int) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", str(length), "--chunking", str(int(chunking))],
        check=True, capture_output=True, text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test, not the figures)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunking", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        print(json.dumps(forward_once(bool(args.chunking), args.child)))
        return

    positions = [500, 1000, 2000, 4000]
    steps = 20 if args.quick else 100
    print("## MEGA (lamina, CPU, 1 thread)\n")
    print(f"Random MEGA causal LM: hidden 256, 4 layers, chunk {CHUNK}; `python bench/bench_mega.py`.\n")
    print(f"### Decoding: time per token through the cache (median of {steps} steps from each position)\n")
    print("| attention | " + " | ".join(f"token {p}" for p in positions) + f" | token {positions[-1]} / token 500 |")
    print("|---|" + "---|" * (len(positions) + 1))
    for chunking in (True, False):
        medians = decode_step_times(chunking, positions, steps)
        label = f"chunked ({CHUNK})" if chunking else "full (no chunking)"
        cells = " | ".join(f"{medians[p] * 1e3:.2f} ms" for p in positions)
        print(f"| {label} | {cells} | {medians[positions[-1]] / medians[positions[0]]:.2f} |")

    lengths = [512, 1024, 2048] if args.quick else [2048, 4096, 8192, 16384, 32768]
    print("\n### Forward pass over a whole sequence (batch 1)\n")
    print("| attention | tokens | CPU time | per token | ×prev | memory added | ×prev |")
    print("|---|---|---|---|---|---|---|")
    for chunking in (True, False):
        previous = None
        for length in lengths if chunking else lengths[:3]:
            result = forward_in_subprocess(chunking, length)
            growth = ("—", "—") if previous is None else (
                f"{result['seconds'] / previous['seconds']:.2f}", f"{result['added_mib'] / max(previous['added_mib'], 1e-9):.2f}")
            label = f"chunked ({CHUNK})" if chunking else "full"
            print(f"| {label} | {length} | {result['seconds'] * 1e3:.0f} ms | {result['seconds'] / length * 1e6:.0f} µs | "
                  f"{growth[0]} | {result['added_mib']:.0f} MiB | {growth[1]} |")
            previous = result


if __name__ == "__main__":
    main()
