"""MEGA benchmark: constant-cost decoding and linear chunked forward passes, lamina and transformers.

    python bench/bench_mega.py            # prints a Markdown section for bench/RESULTS.md
    python bench/bench_mega.py --quick    # smaller lengths, for a smoke run
    python bench/bench_mega.py --reference-python /path/to/python   # a transformers 4.x environment

1. Decoding: one token at a time through the cache from positions 500 … 4,000. With chunking
   the EMA is a recurrence (O(1) in the position) and attention sees at most one chunk, so the
   time per token should be flat: token 4,000 within 20% of token 500. Without chunking
   attention covers every earlier token, so its time grows with the position.
2. Forward passes over whole sequences: with chunking, time and the memory the pass adds should
   grow linearly with the length (ratios per doubling ≈ 2); without, attention is quadratic.
   Time is CPU time (one thread), median of 3 passes; memory is the growth of the process's peak
   resident set during the passes (CPU has no allocator statistics).

Every measurement runs in a fresh subprocess: lamina's in this interpreter, the reference's in
the interpreter given by `--reference-python` (MEGA left transformers with version 5, so the
reference lives in its own environment; default /work/venv4/bin/python when it exists). The
reference cannot decode with chunking, so it has a decoding row only without. The model is
random (weights do not change the cost): hidden 256, 4 layers, shared size 64, intermediate 512,
EMA size 16, chunks of 128. Torch runs on one thread so that timings from a shared machine stay
comparable.
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

CHUNK = 128
DEFAULT_REFERENCE = Path("/work/venv4/bin/python")


def build(library: str, chunking: bool):
    """The benchmark's causal LM from `library` ("lamina" or "transformers")."""
    if library == "lamina":
        from lamina import MegaConfig, MegaForCausalLM
    else:
        from transformers import MegaConfig, MegaForCausalLM
    torch.manual_seed(0)
    config = MegaConfig(
        vocab_size=1000, hidden_size=256, num_hidden_layers=4, intermediate_size=512, ema_projection_size=16,
        shared_representation_size=64, nffn_hidden_size=512, max_positions=8192, is_decoder=True,
        bidirectional=False, use_chunking=chunking, chunk_size=CHUNK if chunking else -1,
    )
    return MegaForCausalLM(config).eval()


def decode_step_times(library: str, chunking: bool, positions: list[int], steps: int) -> dict[int, float]:
    """Median seconds per decoded token starting at each of `positions`.

    One cache per position is filled by a prefill through the cache, then the caches take single
    decoding steps in turn, so that load on a shared machine falls on every position alike.
    """
    model = build(library, chunking)
    tokens = torch.randint(3, 1000, (1, max(positions) + steps))
    times: dict[int, list[float]] = {p: [] for p in positions}
    with torch.no_grad():
        caches = {p: model(tokens[:, :p], use_cache=True).past_key_values for p in positions}
        for step in range(steps):
            for position in positions:
                token = tokens[:, position + step:position + step + 1]
                start = time.perf_counter()
                caches[position] = model(token, past_key_values=caches[position], use_cache=True).past_key_values
                times[position].append(time.perf_counter() - start)
    return {p: statistics.median(t) for p, t in times.items()}


def peak_resident_mib() -> float:
    """This process's peak resident set (VmHWM). Not `ru_maxrss`: Linux carries that across `exec`,
    so a subprocess would start from its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the memory figures need Linux")


def forward_cost(library: str, chunking: bool, length: int) -> dict[str, float]:
    """CPU seconds (median of 3) and peak-memory growth of a forward pass over `length` tokens."""
    model = build(library, chunking)
    tokens = torch.randint(3, 1000, (1, length))
    with torch.no_grad():
        model(tokens[:, :CHUNK], use_cache=False)  # warm up kernels before taking the baseline
        baseline = peak_resident_mib()
        timings = []
        for _ in range(3):
            start = time.process_time()  # CPU time: on one thread, the work done, whatever else runs
            model(tokens, use_cache=False)
            timings.append(time.process_time() - start)
    return {"seconds": statistics.median(timings), "added_mib": peak_resident_mib() - baseline}


def in_subprocess(python: str, library: str, task: str, chunking: bool, **kwargs) -> dict:
    """Run `task` ("decode" or "forward") of this file under `python` and return its JSON result."""
    request = json.dumps({"library": library, "task": task, "chunking": chunking, **kwargs})
    result = subprocess.run([python, __file__, "--child", request], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_child(request: dict) -> dict:
    library, chunking = request["library"], request["chunking"]
    if request["task"] == "decode":
        medians = decode_step_times(library, chunking, request["positions"], request["steps"])
        return {str(p): t for p, t in medians.items()}
    return forward_cost(library, chunking, request["length"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test, not the figures)")
    parser.add_argument("--reference-python", default=str(DEFAULT_REFERENCE) if DEFAULT_REFERENCE.is_file() else None,
                        help="python of an environment with transformers 4.x (MEGA's reference); omit to skip it")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return

    runs = [("lamina", sys.executable)]
    if args.reference_python:
        runs.append(("transformers 4.46.3", args.reference_python))
    positions = [500, 1000, 2000, 4000]
    steps = 20 if args.quick else 100
    print("## MEGA (CPU, 1 thread)\n")
    print(f"Random MEGA causal LM: hidden 256, 4 layers, chunk {CHUNK}; `python bench/bench_mega.py`.\n")
    print(f"### Decoding: time per token through the cache (median of {steps} steps from each position)\n")
    print("| library | attention | " + " | ".join(f"token {p}" for p in positions) + f" | token {positions[-1]} / token 500 |")
    print("|---|---|" + "---|" * (len(positions) + 1))
    for name, python in runs:
        for chunking in (True, False):
            if chunking and name != "lamina":
                continue  # the reference cannot decode with chunking
            medians = in_subprocess(python, name.split()[0], "decode", chunking, positions=positions, steps=steps)
            label = f"chunked ({CHUNK})" if chunking else "full (no chunking)"
            cells = " | ".join(f"{medians[str(p)] * 1e3:.2f} ms" for p in positions)
            print(f"| {name} | {label} | {cells} | {medians[str(positions[-1])] / medians[str(positions[0])]:.2f} |")

    lengths = [512, 1024, 2048] if args.quick else [2048, 4096, 8192, 16384, 32768]
    print("\n### Forward pass over a whole sequence (batch 1)\n")
    print("| library | attention | tokens | CPU time | per token | ×prev | memory added | ×prev |")
    print("|---|---|---|---|---|---|---|---|")
    for name, python in runs:
        for chunking in (True, False):
            previous = None
            for length in lengths if chunking else lengths[:3]:
                result = in_subprocess(python, name.split()[0], "forward", chunking, length=length)
                growth = ("—", "—") if previous is None else (
                    f"{result['seconds'] / previous['seconds']:.2f}",
                    f"{result['added_mib'] / max(previous['added_mib'], 1e-9):.2f}",
                )
                label = f"chunked ({CHUNK})" if chunking else "full"
                print(f"| {name} | {label} | {length} | {result['seconds'] * 1e3:.0f} ms | "
                      f"{result['seconds'] / length * 1e6:.0f} µs | {growth[0]} | {result['added_mib']:.0f} MiB | {growth[1]} |")
                previous = result


if __name__ == "__main__":
    main()
