"""fill_mask (and `lamina fill-mask`) against transformers' fill-mask pipeline on tiny models
saved with a WordPiece vocabulary."""

from __future__ import annotations

import pytest
import torch

import lamina
from lamina.errors import InputError
from lamina.pipelines import fill_mask
from tests.models.encoder_helpers import perturb

transformers = pytest.importorskip("transformers")

WORDS = ["the", "capital", "of", "france", "is", "paris", "a", "city", "big", "small", "river", "##s", "in",
         "europe", "and", "it", "has", "many", "people", "old", ".", ","]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
FAMILIES = {
    "MobileBert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                       embedding_size=16, intra_bottleneck_size=16, max_position_embeddings=32),
    "MegatronBert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                         max_position_embeddings=32),
}


def saved_model(family: str, directory) -> tuple:
    """(reference model, reference tokenizer) saved together in `directory`."""
    vocab_file = directory / "vocab.txt"
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file.write_text("\n".join(VOCAB) + "\n")
    tokenizer = transformers.BertTokenizer.from_pretrained(directory)
    config = getattr(transformers, f"{family}Config")(vocab_size=len(VOCAB), **FAMILIES[family])
    torch.manual_seed(0)
    model = getattr(transformers, f"{family}ForMaskedLM")(config).eval()
    perturb(model)
    with torch.no_grad():  # sharper, well separated scores, so the top tokens are well defined
        model.get_output_embeddings().weight.mul_(20)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("text", ["The capital of France is [MASK].", "[MASK] is a big city , in [MASK] ."])
def test_matches_transformers_pipeline(family, text, tmp_path):
    reference, reference_tokenizer = saved_model(family, tmp_path)
    expected = transformers.pipeline("fill-mask", model=reference, tokenizer=reference_tokenizer)(text, top_k=4)
    model = lamina.AutoModelForMaskedLM.from_pretrained(tmp_path)
    tokenizer = lamina.AutoTokenizer.from_pretrained(tmp_path)
    found = fill_mask(model, tokenizer, text, top_k=4)
    rows = [(expected, found)] if isinstance(expected[0], dict) else list(zip(expected, found))
    assert len(found) == len(expected)
    for expected_row, found_row in rows:
        assert [f["token"] for f in found_row] == [e["token"] for e in expected_row]
        assert [f["token_str"] for f in found_row] == [e["token_str"] for e in expected_row]
        assert [f["sequence"] for f in found_row] == [e["sequence"] for e in expected_row]
        for e, f in zip(expected_row, found_row):
            assert abs(e["score"] - f["score"]) <= 1e-5


def test_errors_and_batches(tmp_path):
    saved_model("MobileBert", tmp_path)
    model = lamina.MobileBertForMaskedLM.from_pretrained(tmp_path)
    tokenizer = lamina.MobileBertTokenizer.from_pretrained(tmp_path)
    with pytest.raises(InputError, match=r"no mask_token \(\[MASK\]\)"):
        fill_mask(model, tokenizer, "the capital of france")
    with pytest.raises(InputError, match="top_k"):
        fill_mask(model, tokenizer, "the [MASK]", top_k=0)
    both = fill_mask(model, tokenizer, ["the [MASK]", "[MASK] city"], top_k=2)
    assert both == [fill_mask(model, tokenizer, "the [MASK]", top_k=2), fill_mask(model, tokenizer, "[MASK] city", top_k=2)]
    assert all(len(result) == 2 for result in both)
    assert sum(f["score"] for f in fill_mask(model, tokenizer, "the [MASK]", top_k=len(VOCAB))) == pytest.approx(1.0)


def test_command_prints_the_pipeline_top_tokens(tmp_path, capsys):
    from lamina.cli import main

    reference, reference_tokenizer = saved_model("MobileBert", tmp_path)
    text = "The capital of France is [MASK]."
    expected = transformers.pipeline("fill-mask", model=reference, tokenizer=reference_tokenizer)(text, top_k=3)
    assert main(["fill-mask", str(tmp_path), text, "--top-k", "3"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(token, sequence) for _, token, sequence in rows] == [(e["token_str"], e["sequence"]) for e in expected]
    assert all(abs(float(score) - e["score"]) <= 1e-4 for (score, _, _), e in zip(rows, expected))

    assert main(["fill-mask", str(tmp_path), "no mask here"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("lamina fill-mask: error:") and "no mask_token" in error and "\n" not in error
