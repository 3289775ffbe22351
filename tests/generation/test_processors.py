"""Each logits processor gives transformers' scores on the same inputs (ties, padding, -inf included)."""

from __future__ import annotations

import pytest
import torch

from lamina.generation import processors as ours
from lamina.generation.config import GenerationConfig

tp = pytest.importorskip("transformers.generation.logits_process")

VOCAB = 50


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(4, VOCAB, generator=generator) * 3
    scores[1, :10] = scores[1, 10]  # ties around the cut-offs
    scores[2, 5] = -float("inf")
    input_ids = torch.randint(0, VOCAB, (4, 7), generator=generator)
    return input_ids, scores


CASES = [
    (lambda: ours.TemperatureLogitsWarper(0.7), lambda: tp.TemperatureLogitsWarper(0.7)),
    (lambda: ours.TemperatureLogitsWarper(1.9), lambda: tp.TemperatureLogitsWarper(1.9)),
    (lambda: ours.TopKLogitsWarper(1), lambda: tp.TopKLogitsWarper(1)),
    (lambda: ours.TopKLogitsWarper(7), lambda: tp.TopKLogitsWarper(7)),
    (lambda: ours.TopKLogitsWarper(500), lambda: tp.TopKLogitsWarper(500)),
    (lambda: ours.TopKLogitsWarper(3, min_tokens_to_keep=5), lambda: tp.TopKLogitsWarper(3, min_tokens_to_keep=5)),
    (lambda: ours.TopPLogitsWarper(0.9), lambda: tp.TopPLogitsWarper(0.9)),
    (lambda: ours.TopPLogitsWarper(0.3), lambda: tp.TopPLogitsWarper(0.3)),
    (lambda: ours.TopPLogitsWarper(0.01, min_tokens_to_keep=3), lambda: tp.TopPLogitsWarper(0.01, min_tokens_to_keep=3)),
    (lambda: ours.MinPLogitsWarper(0.1), lambda: tp.MinPLogitsWarper(0.1)),
    (lambda: ours.MinPLogitsWarper(0.6), lambda: tp.MinPLogitsWarper(0.6)),
    (lambda: ours.MinPLogitsWarper(0.99, min_tokens_to_keep=4), lambda: tp.MinPLogitsWarper(0.99, min_tokens_to_keep=4)),
    (lambda: ours.RepetitionPenaltyLogitsProcessor(1.3), lambda: tp.RepetitionPenaltyLogitsProcessor(1.3)),
    (lambda: ours.RepetitionPenaltyLogitsProcessor(0.8), lambda: tp.RepetitionPenaltyLogitsProcessor(0.8)),
    (lambda: ours.RepetitionPenaltyLogitsProcessor(1.5, torch.tensor([0, 2, 7, 3])),
     lambda: tp.RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=torch.tensor([0, 2, 7, 3]))),
    (lambda: ours.MinLengthLogitsProcessor(5 + 3, [4, 9]), lambda: tp.MinNewTokensLengthLogitsProcessor(5, 3, [4, 9])),
    (lambda: ours.MinLengthLogitsProcessor(5 + 2, [4]), lambda: tp.MinNewTokensLengthLogitsProcessor(5, 2, [4])),
    (lambda: ours.MinLengthLogitsProcessor(10, [3]), lambda: tp.MinLengthLogitsProcessor(10, [3])),
]


@pytest.mark.parametrize("make_ours, make_theirs", CASES)
def test_scores_equal_transformers(inputs, make_ours, make_theirs):
    input_ids, scores = inputs
    expected = make_theirs()(input_ids, scores.clone())
    found = make_ours()(input_ids, scores.clone())
    assert torch.equal(torch.isinf(found), torch.isinf(expected))
    torch.testing.assert_close(found, expected, rtol=1e-6, atol=1e-6)


def test_processors_do_not_change_their_input(inputs):
    input_ids, scores = inputs
    before = scores.clone()
    for make_ours, _ in CASES:
        make_ours()(input_ids, scores)
    assert torch.equal(scores, before)


def test_chain_equals_transformers_chain(inputs):
    input_ids, scores = inputs
    mask = torch.ones_like(input_ids)
    mask[1, :2] = 0
    config = GenerationConfig(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.2)
    chain = ours.build_processors(config, mask)
    assert [type(p).__name__ for p in chain] == [
        "RepetitionPenaltyLogitsProcessor", "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper",
        "MinPLogitsWarper",
    ]
    reference = tp.LogitsProcessorList([
        tp.RepetitionPenaltyLogitsProcessor(1.2, prompt_ignore_length=torch.tensor([0, 2, 0, 0])),
        tp.TemperatureLogitsWarper(0.8), tp.TopKLogitsWarper(20), tp.TopPLogitsWarper(0.9), tp.MinPLogitsWarper(0.05),
    ])
    torch.testing.assert_close(chain(input_ids, scores.clone()), reference(input_ids, scores.clone()))


def test_greedy_uses_no_warpers(inputs):
    _, scores = inputs
    config = GenerationConfig(do_sample=False, temperature=0.5, top_k=3)
    assert len(ours.build_processors(config, torch.ones(4, 7, dtype=torch.long))) == 0
