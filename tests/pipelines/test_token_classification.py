"""token-classification (ner) against transformers 5's pipeline for every family's token
classifier on the real WordPiece vocabulary: every aggregation strategy, character spans, words
given pre-split, long texts in stride windows, batches; scores to 1e-5."""

from __future__ import annotations

import pytest

from lamina.errors import InputError
from tests.pipelines.helpers import FAMILIES, NER_LABELS, assert_close, pipeline_maker

TEXTS = [
    "Ada Lovelace met Charles Babbage in London in 1833.",
    "Mr. O'Neil flew from Zürich to São Paulo; unbelievably, his luggage didn't.",
    "hello",
]
STRATEGIES = ["none", "simple", "first", "average", "max"]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pipes(request, tmp_path_factory):
    return pipeline_maker(request.param, "token", NER_LABELS, tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_entities_equal_transformers(pipes, strategy):
    theirs, ours = pipes("ner", aggregation_strategy=strategy)
    for inputs in (TEXTS[0], TEXTS):
        found, expected = ours(inputs), theirs(inputs)
        assert_close(found, expected, strategy)
    # nothing ignored: every token (or word) is reported, with spans into the text
    found = ours(TEXTS[1], ignore_labels=[])
    assert_close(found, theirs(TEXTS[1], ignore_labels=[]), strategy)
    assert found and all(0 <= e["start"] < e["end"] <= len(TEXTS[1]) for e in found)


def test_batches_equal_transformers(pipes):
    theirs, _ = pipes("ner", aggregation_strategy="simple")
    _, ours = pipes("ner", aggregation_strategy="simple", batch_size=3)
    assert_close(ours(TEXTS, ignore_labels=[]), theirs(TEXTS, ignore_labels=[]))


@pytest.mark.parametrize("strategy", ["none", "first"])
def test_pre_split_words_equal_transformers(pipes, strategy):
    theirs, ours = pipes("ner", aggregation_strategy=strategy)
    words = TEXTS[1].split()
    for inputs in (words, [words, TEXTS[0].split()]):
        assert_close(ours(inputs, is_split_into_words=True), theirs(inputs, is_split_into_words=True))
    assert_close(
        ours(words, is_split_into_words=True, delimiter="_", ignore_labels=[]),
        theirs(words, is_split_into_words=True, delimiter="_", ignore_labels=[]),
    )


@pytest.mark.parametrize("strategy", ["simple", "max"])
def test_stride_windows_equal_transformers(pipes, strategy):
    theirs, ours = pipes("ner", aggregation_strategy=strategy)
    ours.tokenizer.model_max_length = theirs.tokenizer.model_max_length = 12
    try:
        text = " ".join(TEXTS[:2]) * 2
        # windows are padded to the longest; transformers' MobileBERT moves padded rows by 5e-5
        atol = 1e-4 if pipes.family == "mobilebert" else 1e-5
        assert_close(ours(text, stride=4, ignore_labels=[]), theirs(text, stride=4, ignore_labels=[]), atol=atol)
        with pytest.raises(InputError, match="stride"):
            ours(text, stride=4, aggregation_strategy="none")
    finally:
        ours.tokenizer.model_max_length = theirs.tokenizer.model_max_length = int(1e30)
