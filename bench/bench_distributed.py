"""Tensor parallelism on this machine: per-rank load time and peak memory at N = 1, 2, 4 ranks,
and decode speed with the time spent in collectives at N = 1, 2.

    python bench/bench_distributed.py            # prints a Markdown section for bench/RESULTS.md
    python bench/bench_distributed.py --quick    # a smaller model, for a smoke run

The model is a random Mistral-architecture decoder (hidden 1024, 16 heads / 8 kv heads, vocab
32000, untied head; float32), saved once as safetensors. Each N runs in fresh spawned processes on
gloo: a rank reports its resident memory before loading (the interpreter, torch, lamina and the
default process group: the fixed cost), its peak resident memory (VmHWM), the bytes of its parameters and
the load's wall time; the peak is taken after one forward pass, once every weight has been read
(one process maps its weights from the file, so they are resident only once used). Decoding is
greedy with no end token (every step a plain pick, so split ranks pick over their vocabulary
shares), eager (no compile, no native step: the same step at every N), over a 16-token prompt;
each rank times each of its all-reduce / all-gather calls: rank 0's sum is the communication per
token, waiting for the other ranks included; the sum over calls of the shortest rank's time (the
last to arrive waits least) is the transport's own share; and the median of 200 bare 4 KB
all-reduces gives the transport's latency on the host as it is. The host's cores are shared with other work (its load
average is printed): the figures are indicative.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lamina
from lamina.distributed.runtime import ensure_process_group

CACHE = Path(tempfile.gettempdir()) / "lamina-bench-distributed"


def model_dir(layers: int) -> Path:
    directory = CACHE / f"mistral-{layers}l"
    if not (directory / "config.json").is_file():
        torch.manual_seed(0)
        config = lamina.MistralConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                                      num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=8,
                                      head_dim=64, tie_word_embeddings=False)
        lamina.MistralForCausalLM(config).save_pretrained(directory)
    return directory


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now; VmHWM: its peak)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class CollectiveTimer:
    """Wraps torch.distributed's all_reduce and all_gather_single to record each call's wall time."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        for name in ("all_reduce", "all_gather_single"):
            setattr(dist, name, self._timed(getattr(dist, name)))

    def _timed(self, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - start)

        return timed


def all_reduce_latency_s(rounds: int = 200) -> float:
    """The median wall time of a bare all-reduce of 1024 floats over the world."""
    x, times = torch.zeros(1024), []
    dist.barrier()
    for _ in range(rounds):
        start = time.perf_counter()
        dist.all_reduce(x)
        times.append(time.perf_counter() - start)
    return sorted(times)[rounds // 2]


def worker(rank: int, world: int, port: int, directory: str, new_tokens: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:  # the default process group is part of every rank's fixed cost
        ensure_process_group()
    before = status_mb("VmRSS")
    start = time.perf_counter()
    split = dict(tp_plan="auto") if world > 1 else {}
    model = lamina.MistralForCausalLM.from_pretrained(directory, **split)
    load_s = time.perf_counter() - start
    with torch.no_grad():  # every weight read once: one process's mapped weights count as resident
        model(torch.ones(1, 4, dtype=torch.long))
    peak = status_mb("VmHWM")  # not ru_maxrss, which a spawned process inherits from before its exec
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    result = dict(rank=rank, load_s=load_s, fixed_mb=before, peak_mb=peak, weights_mb=weights)
    if new_tokens:
        model.native_decode = False
        timer = CollectiveTimer() if world > 1 else None
        prompt = torch.randint(1, 32000, (1, 16), generator=torch.Generator().manual_seed(0))
        kwargs = dict(do_sample=False, disable_compile=True, eos_token_id=None)
        model.generate(prompt, max_new_tokens=2, **kwargs)  # warm up
        calls_before = len(timer.seconds) if timer else 0
        start = time.perf_counter()
        tokens = model.generate(prompt, max_new_tokens=new_tokens, **kwargs)
        seconds = time.perf_counter() - start
        result.update(tok_s=new_tokens / seconds, ms_per_token=1000 * seconds / new_tokens,
                      calls=timer.seconds[calls_before:] if timer else [],
                      latency_us=1e6 * all_reduce_latency_s() if timer else 0.0,
                      tokens=tokens[0, -new_tokens:].tolist())
    torch.save(result, Path(out) / f"rank{rank}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(directory: Path, world: int, new_tokens: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(world, free_port(), str(directory), new_tokens, out), nprocs=world, join=True)
        return [torch.load(Path(out) / f"rank{rank}.pt") for rank in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers instead of 6")
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    directory = model_dir(2 if args.quick else 6)
    model_mb = sum(f.stat().st_size for f in directory.glob("*.safetensors")) / 2**20
    print(f"## Tensor parallelism (CPU, gloo, {os.cpu_count()} cores; bench/bench_distributed.py)\n")
    print(f"Random Mistral-architecture model, {model_mb:.0f} MB of float32 safetensors; host load average "
          f"{os.getloadavg()[0]:.1f} at the start.\n")
    print("| ranks | load s (max rank) | fixed MB / rank | peak RSS MB / rank (max) | weights MB / rank | "
          "bound 1.2 × model / N + fixed | decode tok/s | ms / token | collectives ms / token | "
          "of which transport (last rank in) | collectives / token | bare 4 KB all-reduce µs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    tokens = {}
    for world in (1, 2, 4):
        results = measure(directory, world, args.new_tokens if world <= 2 else 0)
        worst = max(results, key=lambda r: r["peak_mb"])
        bound = 1.2 * model_mb / world + worst["fixed_mb"]
        decode = results[0]
        if "tok_s" in decode:
            calls = [rank["calls"] for rank in results]
            decode["comm_ms_per_token"] = 1000 * sum(calls[0]) / args.new_tokens
            # the last rank to arrive waits least: the transport's own share of a call
            decode["transport_ms_per_token"] = 1000 * sum(map(min, zip(*calls))) / args.new_tokens
            decode["calls_per_token"] = len(calls[0]) / args.new_tokens
        speed = (f"{decode['tok_s']:.1f} | {decode['ms_per_token']:.0f} | {decode['comm_ms_per_token']:.1f} | "
                 f"{decode['transport_ms_per_token']:.1f} | {decode['calls_per_token']:.0f} | {decode['latency_us']:.0f}"
                 if "tok_s" in decode else "– | – | – | – | – | –")
        tokens[world] = decode.get("tokens")
        print(f"| {world} | {max(r['load_s'] for r in results):.2f} | {worst['fixed_mb']:.0f} | {worst['peak_mb']:.0f} | "
              f"{decode['weights_mb']:.0f} | {bound:.0f} | {speed} |")
    print(f"\nGreedy tokens at N = 2 equal N = 1's: {tokens[1] == tokens[2]}; host load average "
          f"{os.getloadavg()[0]:.1f} at the end.")


if __name__ == "__main__":
    main()
