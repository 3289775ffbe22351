"""GPU decode benchmark: lamina against transformers on the same random weights, one CUDA device.

    python bench/bench_cuda.py [--shapes smollm2-135m,mistral-7b] [--new-tokens 128] [--out FILE]
                               [--quantized int8,int4] [--lamina-only]

Random weights of a real model's shapes (decode speed does not depend on the values), bf16, sdpa.
Rows: lamina's eager step, lamina's compiled step (CUDA graphs), transformers' default (dynamic
cache, eager) and transformers' static cache (which it compiles itself on CUDA). Greedy decoding of
`--new-tokens` tokens after a 16-token prompt at batch 1 and 8, and a 512-token prefill. Each figure
is the best of three runs after a warm-up run (which pays for compiling).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                         max_position_embeddings=8192),
    "mistral-7b": dict(model_type="mistral", vocab_size=32768, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                       rope_theta=1000000.0, rms_norm_eps=1e-5, max_position_embeddings=32768, sliding_window=None),
}


def build_checkpoint(shape: str, directory: Path) -> None:
    import transformers

    settings = dict(SHAPES[shape])
    config_class = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig}[settings.pop("model_type")]
    config = config_class(**settings)
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    del model
    torch.cuda.empty_cache()


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def measure(model, vocab: int, new_tokens: int, settings: dict) -> dict:
    generator = torch.Generator().manual_seed(0)
    result = {}
    with torch.no_grad():
        prompt = torch.randint(100, vocab, (1, 512), generator=generator).cuda()
        model(prompt[:, :16])
        result["prefill"] = 512 / timed(lambda: model(prompt, logits_to_keep=1))
        for batch in (1, 8):
            ids = torch.randint(100, vocab, (batch, 16), generator=generator).cuda()
            kwargs = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                          eos_token_id=None, **settings)
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            result[f"warmup_b{batch}"] = time.perf_counter() - start
            result[f"decode_b{batch}"] = batch * new_tokens / timed(lambda: model.generate(ids, **kwargs))
            result[f"tokens_b{batch}"] = out[:, 16:].cpu()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="smollm2-135m,mistral-7b")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quantized", default="", help="lamina quantization methods to add as compiled rows")
    parser.add_argument("--lamina-only", action="store_true", help="skip the transformers rows")
    args = parser.parse_args()
    import transformers

    import lamina

    lines = [f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, transformers {transformers.__version__}; "
             f"bf16, sdpa, greedy, {args.new_tokens} new tokens after 16, prefill 512", "",
             "| shape | engine | prefill tok/s | decode b1 tok/s | decode b8 tok/s | first run s (b1) | same tokens as lamina eager (b1, b8) |",
             "|---|---|---|---|---|---|---|"]
    for shape in args.shapes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            build_checkpoint(shape, Path(tmp))
            vocab = SHAPES[shape]["vocab_size"]
            rows = {}

            def record(engine: str, model, settings: dict) -> None:
                """Measure one row and print it at once, so that a run cut short keeps what it measured."""
                row = rows[engine] = measure(model, vocab, args.new_tokens, settings)
                base = rows["lamina eager"]
                same = [bool(torch.equal(row[f"tokens_b{b}"], base[f"tokens_b{b}"])) for b in (1, 8)]
                line = (f"| {shape} | {engine} | {row['prefill']:,.0f} | {row['decode_b1']:,.1f} "
                        f"| {row['decode_b8']:,.1f} | {row['warmup_b1']:.1f} | {same} |")
                lines.append(line)
                print(line, flush=True)

            ours = lamina.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16, device_map="cuda",
                                                               attn_implementation="sdpa")
            record("lamina eager", ours, dict(disable_compile=True))
            record("lamina compiled (CUDA graphs)", ours, dict(compile_config={}))
            del ours
            torch.cuda.empty_cache()
            for method in filter(None, args.quantized.split(",")):
                quantized = lamina.AutoModelForCausalLM.from_pretrained(
                    tmp, dtype=torch.bfloat16, device_map="cuda", attn_implementation="sdpa",
                    quantization_config=lamina.QuantizationConfig(method=method))
                record(f"lamina {method} compiled", quantized, dict(compile_config={}))
                del quantized
                torch.cuda.empty_cache()
            if not args.lamina_only:
                theirs = transformers.AutoModelForCausalLM.from_pretrained(
                    tmp, dtype=torch.bfloat16, device_map="cuda", attn_implementation="sdpa")
                record("transformers dynamic cache", theirs, {})
                record("transformers static cache (auto-compiled)", theirs, dict(cache_implementation="static"))
                del theirs
                torch.cuda.empty_cache()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
