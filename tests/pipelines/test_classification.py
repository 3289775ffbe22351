"""text-classification and zero-shot-classification against transformers 5's pipelines, for
every family's sequence classifier, on the real WordPiece vocabulary: the same labels in the same
order, scores to 1e-5, alone and in batches."""

from __future__ import annotations

import pytest

import lamina
from lamina.errors import InputError
from tests.pipelines.helpers import FAMILIES, NLI_LABELS, assert_close, pipeline_maker

TEXTS = ["I love this movie, it was wonderful!", "The weather in Paris is grey today.", "Terrible service."]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pipes(request, tmp_path_factory):
    """(transformers' pipeline, lamina's) maker for one family's NLI-labelled classifier."""
    return pipeline_maker(request.param, "sequence", NLI_LABELS, tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("call", [
    dict(), dict(top_k=None), dict(top_k=2), dict(function_to_apply="sigmoid", top_k=None), dict(function_to_apply="none"),
])  # fmt: skip
def test_text_classification_equals_transformers(pipes, call):
    theirs, ours = pipes("text-classification")
    pairs = [{"text": TEXTS[0], "text_pair": TEXTS[1]}, [[TEXTS[1], TEXTS[2]]]]
    for inputs in (TEXTS[0], TEXTS, pairs[0], pairs):
        assert_close(ours(inputs, **call), theirs(inputs, **call), f"{inputs!r:.30} {call}")


def test_text_classification_in_batches_equals_transformers(pipes):
    """Padded batches give each text its own answer. (transformers' MobileBERT moves a padded
    row's scores by 5e-5, so the reference is its unbatched answer.)"""
    theirs, _ = pipes("sentiment-analysis")
    _, ours = pipes("sentiment-analysis", batch_size=2)
    assert_close(ours(TEXTS, top_k=None), theirs(TEXTS, top_k=None))


@pytest.mark.parametrize("multi_label", [False, True])
def test_zero_shot_equals_transformers(pipes, multi_label):
    theirs, ours = pipes("zero-shot-classification")
    labels = ["cinema", "weather", "politics", "food"]
    for inputs in (TEXTS[0], TEXTS[:2]):
        assert_close(ours(inputs, labels, multi_label=multi_label), theirs(inputs, labels, multi_label=multi_label))
    template = "The topic is {}."
    assert_close(
        ours(TEXTS[1], candidate_labels="weather, food", hypothesis_template=template, batch_size=2),
        theirs(TEXTS[1], candidate_labels="weather, food", hypothesis_template=template, batch_size=2),
    )
    assert_close(ours(TEXTS[2], ["only"]), theirs(TEXTS[2], ["only"]))  # one label: entailment vs contradiction


def test_options_are_checked(pipes):
    _, ours = pipes("zero-shot-classification")
    with pytest.raises(InputError, match="candidate_labels"):
        ours(TEXTS[0], [])
    with pytest.raises(InputError, match="hypothesis_template"):
        ours(TEXTS[0], ["a"], hypothesis_template="no slot")
    _, classifier = pipes("text-classification")
    with pytest.raises(InputError, match="function_to_apply"):
        classifier(TEXTS[0], function_to_apply="relu")
    with pytest.raises(InputError, match="unknown task"):
        lamina.pipeline("summarization", model=classifier.model, tokenizer=classifier.tokenizer)
