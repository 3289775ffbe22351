"""bench/run.py's pure parts: the results table, its ratios, and RESULTS.md section replacement."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROW = dict(load_s=2.0, load_peak_rss=600e6, weight_bytes=500e6, prefill_tok_s=500.0, decode_b1_tok_s=20.0,
           decode_b8_tok_s=80.0, kv_bytes=1024, kv_tokens=144, backend=None)


def test_report_gives_ratios_to_transformers_and_the_ceiling(bench):
    results = {
        "lamina:float32": dict(ROW, decode_b1_tok_s=30.0, load_s=1.0),
        "transformers:float32": ROW,
        "llama.cpp:gguf": {"error": "llama_cpp is not installed"},
    }
    text = bench.report(results, bandwidth=25e9, threads=2, model_path=Path("m.gguf"), new_tokens=128)
    lamina_row = next(line for line in text.splitlines() if line.startswith("| lamina:float32"))
    cells = [c.strip() for c in lamina_row.strip("|").split("|")]
    assert cells[1] == "1.00 (2.00×)"  # load: half the time is 2× better
    assert cells[2] == "600 (1.20)"  # peak RSS over weight bytes
    assert cells[4] == "30.0 (1.50×)"
    assert cells[5] == "50"  # 25 GB/s ÷ 500 MB per token
    assert "llama_cpp is not installed" in text


def test_write_results_replaces_only_its_section(bench, tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark results\n\n## Notes\nkeep me\n\n## Latest run (bench/run.py)\nold\n\n## MEGA\nkeep too\n")
    bench.write_results(out, "## Latest run (bench/run.py)\nnew\n")
    text = out.read_text()
    assert "old" not in text and "new" in text
    assert "keep me" in text and "## MEGA\nkeep too" in text
    bench.write_results(out, "## Latest run (bench/run.py)\nnewer\n")
    assert out.read_text().count("## Latest run") == 1 and "newer" in out.read_text()
