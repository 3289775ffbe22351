"""`lamina bench` (lamina/bench.py): the results table and its ratios, RESULTS.md section
replacement, the sliding-window KV measurement and the command on a tiny model."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

import lamina
from lamina import bench, cli

ROW = dict(load_s=2.0, load_peak_rss=600e6, model_bytes=500e6, weight_bytes=400e6, prefill_tok_s=500.0, decode_b1_tok_s=20.0,
           decode_b8_tok_s=80.0, kv_bytes=1024, kv_tokens=144, backend=None, matmul_tok_s=40.0)


def _cells(text: str, spec: str) -> list[str]:
    row = next(line for line in text.splitlines() if line.startswith(f"| {spec} "))
    return [c.strip() for c in row.strip("|").split("|")]


def test_report_gives_ratios_to_transformers_and_the_ceilings():
    results = {
        "lamina:float32": dict(ROW, decode_b1_tok_s=30.0, eager_b1_tok_s=22.0, load_s=1.0, first_run_s=40.0),
        "transformers:float32": ROW,
        "llama.cpp:gguf": {"error": "llama_cpp is not installed"},
    }
    sliding = {"lamina": dict(tokens=264, kv_bytes=32768, window_bytes=32768),
               "transformers": dict(tokens=264, kv_bytes=65536, window_bytes=32768)}
    gguf_loads = {"lamina:int4": dict(load_s=0.5, load_peak_rss=130e6, model_bytes=100e6),
                  "transformers:float32": dict(load_s=5.0, load_peak_rss=1200e6, model_bytes=500e6),
                  "transformers:bfloat16": {"error": "accelerate is required"}}
    text = bench.report(results, bandwidth=25e9, threads=2, model_path=Path("m.gguf"), new_tokens=128, sliding=sliding,
                        gguf_loads=gguf_loads)
    assert "| lamina:int4 | 0.50 (10.00×) | 130 (1.30) | 100 |" in text  # against transformers' float32 load
    assert "| transformers:bfloat16 | error: accelerate is required |||" in text
    cells = _cells(text, "lamina:float32")
    assert cells[1] == "1.00 (2.00×)"  # load: half the time is 2× better
    assert cells[2] == "600 (1.20)"  # peak RSS over the model's bytes
    assert cells[4] == "22.0 (1.10×)"  # eager decode against transformers' decode
    assert cells[5] == "30.0 (1.50×)"
    assert cells[6] == "75%"  # 30 of a 40 tok/s matmul ceiling
    assert cells[8] == "62"  # 25 GB/s ÷ 400 MB of weights read per token
    assert cells[10] == "40.0"
    assert _cells(text, "transformers:float32")[4] == "—"
    assert "llama_cpp is not installed" in text
    assert "lamina: 32,768 KV bytes after 264 tokens; the window is 32,768 bytes: stayed at the window" in text
    assert "transformers: 65,536 KV bytes after 264 tokens; the window is 32,768 bytes: grew past the window" in text


def test_write_results_replaces_only_its_section(tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# Benchmark results\n\n## Notes\nkeep me\n\n## Latest run (bench/run.py)\nold\n\n## MEGA\nkeep too\n")
    bench.write_results(out, "## Latest run (lamina bench)\nnew\n")
    text = out.read_text()
    assert "old" not in text and "new" in text
    assert "keep me" in text and "## MEGA\nkeep too" in text
    bench.write_results(out, "## Latest run (lamina bench)\nnewer\n")
    assert out.read_text().count("## Latest run") == 1 and "newer" in out.read_text()


def test_sliding_window_kv_stays_at_the_window():
    found = bench.sliding_window_kv("lamina", window=16)
    assert found["tokens"] == 8 + 4 * 16
    assert found["kv_bytes"] == found["window_bytes"] == 2 * 2 * 2 * 16 * 16 * 4


def test_matmul_time_covers_every_linear_layer(monkeypatch):
    model = lamina.MistralForCausalLM(lamina.MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)).eval()
    calls = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    assert bench.matmul_seconds(model, repeats=1) > 0
    # 4 linears a layer and the output layer, called in a warm-up and one timed round
    assert len(calls) == 2 * (2 * 4 + 1) and all(shape[:2] == (1, 1) for shape in calls)


def test_bench_command_on_a_tiny_model(tmp_path, capsys):
    torch.manual_seed(0)
    lamina.MistralForCausalLM(lamina.MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)).save_pretrained(tmp_path / "tiny")
    out = tmp_path / "RESULTS.md"
    status = cli.main(["bench", str(tmp_path / "tiny"), "--modes", "transformers:float32", "--new-tokens", "2",
                       "--out", str(out)])
    assert status == 0
    cells = _cells(out.read_text(), "transformers:float32")
    assert float(cells[3].split()[0].replace(",", "")) > 0  # prefill tok/s
    assert float(cells[5].split()[0].replace(",", "")) > 0  # decode tok/s
    assert "stayed at the window" in out.read_text()


def test_bench_refuses_a_missing_model_and_unknown_modes(tmp_path, capsys):
    assert cli.main(["bench", str(tmp_path / "nothing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["bench", str(tmp_path), "--modes", "lamina:int3"]) == 1
    assert "unknown mode 'lamina:int3'" in capsys.readouterr().err


def test_model_bytes_count_tied_weights_once():
    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2)
    tied = lamina.MistralForCausalLM(lamina.MistralConfig(**shape, tie_word_embeddings=True))
    untied = lamina.MistralForCausalLM(lamina.MistralConfig(**shape, tie_word_embeddings=False))
    embedding = 64 * 32 * 4
    assert bench.model_bytes(untied) - bench.model_bytes(tied) == embedding
    assert bench.model_bytes(untied) == sum(t.numel() * t.element_size() for t in [*untied.parameters(), *untied.buffers()])


def test_head_to_head_table_pairs_each_round_with_the_reference():
    rounds = {"lamina:int8": {"tok_s": [90.0, 60.0, 110.0]},
              "lamina:int4": {"error": "worker died"},
              "llama.cpp:gguf": {"tok_s": [100.0, 50.0, 100.0], "note": bench.ONE_TOKEN_AT_A_TIME}}
    lines = bench.head_to_head_lines(rounds)
    assert f"- llama.cpp:gguf: {bench.ONE_TOKEN_AT_A_TIME}" in lines
    assert "3 rounds" in lines[1]
    # rounds' ratios 0.90, 1.20, 1.10: the median and range of those, not the ratio of the medians (0.90)
    assert "| lamina:int8 | 90.0 | 110.0 | 1.10× (0.90–1.20) |" in lines
    assert "| lamina:int4 | error: worker died |||" in lines
    assert "| llama.cpp:gguf | 100.0 | 100.0 |  |" in lines
    text = bench.report({"lamina:int8": dict(ROW)}, bandwidth=25e9, threads=2, model_path=Path("m.gguf"),
                        new_tokens=128, rounds=rounds)
    assert "| lamina:int8 | 90.0 | 110.0 | 1.10× (0.90–1.20) |" in text


def test_head_to_head_runs_engines_in_turn_and_reports_a_failed_one(tmp_path):
    torch.manual_seed(0)
    lamina.MistralForCausalLM(lamina.MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)).save_pretrained(tmp_path / "tiny")
    # llama.cpp cannot read a directory (or is not installed): its row is an error, the others run
    rounds = bench.head_to_head(["transformers:float32", "lamina:float32", "llama.cpp:gguf"], tmp_path / "tiny",
                                threads=1, new_tokens=3, rounds=2)
    assert list(rounds) == ["transformers:float32", "lamina:float32", "llama.cpp:gguf"]
    for spec in ("transformers:float32", "lamina:float32"):
        assert len(rounds[spec]["tok_s"]) == 2 and all(speed > 0 for speed in rounds[spec]["tok_s"])
    assert rounds["llama.cpp:gguf"]["error"]


class FakeLlama:
    """llama_cpp.Llama's surface the bench uses, recording its arguments."""

    made: list[dict] = []

    def __init__(self, path, **settings):
        FakeLlama.made.append(settings)
        self.metadata = {}

    def n_vocab(self):
        return 64

    def reset(self):
        pass

    def eval(self, tokens):
        pass

    def generate(self, prompt, **settings):
        while True:
            yield 5


@pytest.mark.parametrize("batches", [True, False])
def test_llama_cpp_evaluates_one_token_at_a_time_where_batches_crash(batches, tmp_path, monkeypatch):
    """Where llama.cpp's batched evaluation crashes (its AMX build on a Xeon), its rows decode with
    the prompt one token at a time, say so, and give no prefill figure."""
    fake = types.SimpleNamespace(Llama=FakeLlama, __version__="0.0.test")
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    monkeypatch.setattr(bench, "llama_cpp_batches_work", lambda path, threads: batches)
    monkeypatch.setattr(FakeLlama, "made", [])
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    row = bench.llama_cpp_worker(model, threads=1, new_tokens=3)
    assert FakeLlama.made[0]["n_batch"] == FakeLlama.made[0]["n_ubatch"] == (bench.PROMPT_TOKENS if batches else 1)
    assert (row["prefill_tok_s"] is not None) == batches
    assert row["decode_b1_tok_s"] > 0
    assert (bench.ONE_TOKEN_AT_A_TIME in row["backend"]) != batches
    text = bench.report({"llama.cpp:gguf": row}, bandwidth=25e9, threads=1, model_path=model, new_tokens=3)
    assert "| llama.cpp:gguf |" in text


def test_llama_cpp_batch_probe_fails_on_what_it_cannot_evaluate(tmp_path):
    """The probe runs in a process of its own: a file llama.cpp cannot load (or no llama_cpp at all)
    is a failed probe, not a failed benchmark."""
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model")
    assert bench.llama_cpp_batches_work(bogus, threads=1) is False
