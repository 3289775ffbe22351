"""MEGA's pipelines (text and zero-shot classification, token classification with every
aggregation strategy, fill-mask, feature extraction) against transformers 4.46.3's, recorded by
scripts/record_pipeline_fixtures.py (transformers 5 removed MEGA); scores to 1e-5."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import lamina
from tests.pipelines.helpers import VOCAB_FILE, assert_close
from tests.pipelines.synthetic import write_checkpoint

FIXTURES = Path(__file__).parents[1] / "fixtures" / "mega_pipelines"
AUTO = {"sequence": "AutoModelForSequenceClassification", "token": "AutoModelForTokenClassification",
        "masked": "AutoModelForMaskedLM", "base": "AutoModel"}  # fmt: skip


@pytest.mark.parametrize("head", sorted(AUTO))
def test_answers_equal_transformers_4(head, tmp_path):
    reference = json.loads((FIXTURES / head / "reference.json").read_text())
    assert reference["transformers"] == "4.46.3"
    config = (FIXTURES / head / "config.json").read_text()
    model = getattr(lamina, AUTO[head]).from_pretrained(write_checkpoint(reference["shapes"], reference["scale"], config, tmp_path / "model"))
    shutil.copyfile(VOCAB_FILE, tmp_path / "vocab.txt")
    tokenizer = lamina.BertTokenizer.from_pretrained(tmp_path)
    for case in reference["cases"]:
        pipe = lamina.pipeline(case["task"], model=model, tokenizer=tokenizer)
        assert_close(pipe(*case["args"], **case["kwargs"]), case["answer"], f"{case['task']} {case['kwargs']}")
