"""Serving benchmark: aggregate output tokens/s and p50/p99 time to first token and inter-token
latency at 1, 4, 16 and 64 concurrent streams, greedy, a fixed mix of prompts and one output length,
against `lamina serve`, llama.cpp's server (`python -m llama_cpp.server`, llama-cpp-python's
`server` extra) and `transformers serve --continuous-batching`, each where it runs, all on the
default model's GGUF (transformers on lamina's conversion of it to an HF directory); lamina's own
`generate` on one prompt, in rounds back to back with 1-stream requests to lamina serve, for the
1-stream comparison; and the per-token cost of `response_format`
JSON's automaton. Results go into bench/RESULTS.md's "Serving" section.

    python bench/bench_serve.py                           # lamina on the default model
    python bench/bench_serve.py --llama-cpp-python /work/venv-llama/bin/python --transformers-model DIR

Every server is started here on a free loopback port with the same `--threads`; they all run at
once, idle but for the one measured, so that each number of streams is measured on every engine
within minutes of the others on a shared host.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lamina import cli  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.",
             "Explain gravity to a child in two sentences.", "List three fruits and their colours.",
             "Who wrote Hamlet, and when?", "Translate 'good morning' to Spanish and French.",
             "Give me a short tip for learning to code.", "Describe a rainy day in one paragraph."]


# `python -m llama_cpp.server` with llama.cpp's extra weight buffer types off: a GGML_NATIVE build
# on a CPU with AMX puts prompt products on AMX tiles, which fault where the kernel does not grant
# their state (this sandbox); the Q4_1 file is not repacked anyway, so its kernels are the same
LLAMA_SERVER = """
import runpy
import llama_cpp.llama_cpp as llama_cpp
defaults = llama_cpp.llama_model_default_params
def without_extra_buffers():
    params = defaults()
    params.use_extra_bufts = False
    return params
llama_cpp.llama_model_default_params = without_extra_buffers
runpy.run_module("llama_cpp.server", run_name="__main__")
"""
# transformers serve's KV cache blocks of 32 tokens: every stream's prompt and answer at 64 streams
TRANSFORMERS_BLOCKS = 256


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(command: list[str], url: str, threads: int, timeout: float = 900) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:3]} exited with {process.returncode}")
        try:
            if httpx.get(url + "/v1/models", timeout=5).status_code == 200 and \
                    httpx.get(url + "/health", timeout=5).status_code in (200, 404):
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise TimeoutError(f"{command[:3]} did not answer within {timeout} s")


def _one_stream(url: str, model: str, question: str, max_tokens: int) -> tuple[float, list[float], int]:
    """Time to first token, the gaps between the following chunks, and the completion tokens."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    arrivals, tokens = [], 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as reply:
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                arrivals.append(time.perf_counter())
    tokens = tokens or len(arrivals)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return (arrivals[0] - start if arrivals else float("nan")), gaps, tokens


def measure(url: str, model: str, streams: int, max_tokens: int) -> dict[str, float]:
    """`streams` clients at once, each asking one question of the mix."""
    results: list[tuple[float, list[float], int]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        result = _one_stream(url, model, QUESTIONS[index % len(QUESTIONS)], max_tokens)
        with lock:
            results.append(result)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    ttfts = sorted(r[0] for r in results)
    gaps = sorted(g for r in results for g in r[1])
    return {"tokens_per_s": sum(r[2] for r in results) / elapsed, "ttft_p50": _quantile(ttfts, 0.5),
            "ttft_p99": _quantile(ttfts, 0.99), "itl_p50": _quantile(gaps, 0.5), "itl_p99": _quantile(gaps, 0.99)}


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


class Generate:
    """lamina's `generate` alone in this process, on the first question (the one a 1-stream run asks),
    with the default model as `lamina generate` loads it."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        source = cli.default_model()
        self.model, tokenizer = cli.load_model(source, quantize="auto"), cli.load_tokenizer(source)
        self.prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}],
                                                    add_generation_prompt=True, return_tensors="pt")["input_ids"]
        self.model.generate(self.prompt, max_new_tokens=4, do_sample=False)

    def tokens_per_s(self, max_tokens: int) -> float:
        start = time.perf_counter()
        out = self.model.generate(self.prompt, max_new_tokens=max_tokens, do_sample=False, eos_token_id=None)
        return (out.shape[1] - self.prompt.shape[1]) / (time.perf_counter() - start)


def paired_one_stream(url: str, model: str, generate: Generate, max_tokens: int, rounds: int) -> list[tuple[float, float]]:
    """`rounds` pairs of (1-stream tok/s of the server, `generate`'s tok/s), each pair run back to back
    so that both meet the same host load."""
    return [(measure(url, model, 1, max_tokens)["tokens_per_s"], generate.tokens_per_s(max_tokens))
            for _ in range(rounds)]


def json_overhead_ms() -> dict[str, float]:
    """Milliseconds per token that `response_format` JSON's automaton adds to a row (mask and
    advance over the default model's vocabulary), replaying a JSON answer token by token with
    random logits in which the answer's token is the most likely: greedy and sampled rows."""
    import torch

    from lamina.generation.json_constraint import JsonConstraint, TokenTexts

    tokenizer = cli.load_tokenizer(cli.default_model())
    vocabulary = TokenTexts.of(tokenizer)
    answer = ('{\n  "title": "The Nightingale",\n  "author": "Kristin Hannah",\n  "year": 2015,\n'
              '  "tags": ["war", "sisters", "France"],\n  "in_print": true\n}')
    tokens = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    generator = torch.Generator().manual_seed(0)
    spent = {}
    for kind in ("greedy", "sampled"):
        constraint, elapsed = JsonConstraint(vocabulary, [tokenizer.eos_token_id]), 0.0
        for token in tokens:
            logits = torch.randn(len(vocabulary.texts), generator=generator)
            logits[token] = 10.0
            start = time.perf_counter()
            constraint.greedy(logits) if kind == "greedy" else constraint.mask(logits)
            constraint.advance(token)
            elapsed += time.perf_counter() - start
        spent[kind] = elapsed / len(tokens) * 1e3
    return spent


def servers(args: argparse.Namespace) -> list[tuple[str, list[str], str]]:
    """(name, command with {port}, model name) of each server to run."""
    gguf = str(cli.default_model())
    found = [("lamina serve", [sys.executable, "-m", "lamina", "serve", gguf, "--port", "{port}",
                               "--served-model-name", "m"], "m")]
    if args.llama_cpp_python:
        # the chat template is the GGUF's own, as lamina's; it answers one request at a time, and by
        # default ends a stream as soon as another request waits: here every stream runs to its end
        found.append(("llama.cpp server", [args.llama_cpp_python, "-c", LLAMA_SERVER, "--model", gguf,
                                           "--port", "{port}", "--n_ctx", "8192", "--n_threads", str(args.threads),
                                           "--n_threads_batch", str(args.threads), "--interrupt_requests", "False"],
                      gguf))
    if args.transformers_model:
        directory = Path(args.transformers_model)
        if not (directory / "config.json").exists():
            subprocess.run([sys.executable, "-m", "lamina", "convert", "-q", gguf, str(directory)], check=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        found.append(("transformers serve", [str(Path(sys.executable).parent / "transformers"), "serve",
                                             str(directory), "--port", "{port}", "--host", "127.0.0.1",
                                             "--device", "cpu", "--continuous-batching", "--log-level", "error",
                                             # its cache is sized from the GPU's memory otherwise: on the
                                             # CPU it takes what the host has
                                             "--cb-block-size", "32", "--cb-num-blocks", str(TRANSFORMERS_BLOCKS),
                                             "--cb-max-batch-tokens", "512"],
                      str(directory)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every engine (default: 1)")
    parser.add_argument("--rounds", type=int, default=5, help="paired 1-stream rounds of lamina serve and generate")
    parser.add_argument("--llama-cpp-python", default=None, help="a python with llama-cpp-python[server]")
    parser.add_argument("--transformers-model", default=None,
                        help="an HF directory for `transformers serve` (written from the GGUF if it has no config)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    rows: dict[str, list[str]] = {}
    running = []
    pairs: list[tuple[float, float]] = []
    try:
        for name, command, model in servers(args):
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            try:
                running.append((name, _start([part.replace("{port}", str(port)) for part in command], url,
                                             args.threads), url, model))
                measure(url, model, 1, 4)  # warm-up
            except (RuntimeError, TimeoutError, OSError, httpx.HTTPError) as err:
                rows[name] = [f"| {name} | did not start: {err} | | | | | |"]
        for streams in args.streams:
            for name, _, url, model in running:
                result = measure(url, model, streams, args.max_tokens)
                rows.setdefault(name, []).append(
                    f"| {name} | {streams} | {result['tokens_per_s']:.1f} | {result['ttft_p50'] * 1e3:.0f} | "
                    f"{result['ttft_p99'] * 1e3:.0f} | {result['itl_p50'] * 1e3:.1f} | {result['itl_p99'] * 1e3:.1f} |")
                print(rows[name][-1], _load(), flush=True)
        lamina = [(url, model) for name, _, url, model in running if name == "lamina serve"]
        if lamina:
            pairs = paired_one_stream(*lamina[0], Generate(args.threads), args.max_tokens, args.rounds)
    finally:
        for _, process, _, _ in running:
            process.terminate()
            process.wait(timeout=120)
    _write(args, [row for name in rows for row in rows[name]], pairs, json_overhead_ms())


def _load() -> str:
    return "load average " + " ".join(f"{value:.1f}" for value in os.getloadavg())


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else float("nan")


def _write(args: argparse.Namespace, rows: list[str], pairs: list[tuple[float, float]],
           json_ms: dict[str, float]) -> None:
    header = ("| server | streams | output tok/s | TTFT p50 ms | TTFT p99 ms | inter-token p50 ms | "
              "inter-token p99 ms |\n|---|---|---|---|---|---|---|")
    section = (f"## Serving (bench/bench_serve.py, {time.strftime('%Y-%m-%d')})\n\n"
               f"SmolLM2-135M-Instruct Q4_1 GGUF (int4 in lamina), greedy chat completions of {args.max_tokens} "
               f"tokens at most over {len(QUESTIONS)} questions, streamed; {args.threads} thread(s) per engine; "
               f"one run; {_load()} at the end.\n\n{header}\n"
               + "\n".join(rows) + f"\n\nlamina serve at 1 stream against lamina `generate` alone on the same (first) "
               f"question, {len(pairs)} rounds of the two back to back: medians {_median([p[0] for p in pairs]):.1f} "
               f"and {_median([p[1] for p in pairs]):.1f} tok/s, serve / generate "
               f"{_median([p[0] / p[1] for p in pairs]):.2f} (median of the rounds' ratios).\n"
               f"`response_format` JSON's automaton: {json_ms['greedy']:.2f} ms per token for a greedy row, "
               f"{json_ms['sampled']:.2f} ms for a sampled one.\n")
    path = Path(args.output)
    text = path.read_text() if path.exists() else ""
    marker = "## Serving (bench/bench_serve.py"
    if marker in text:
        start = text.index(marker)
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    main()
