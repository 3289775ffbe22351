"""Assisted decoding with `do_sample=True` (speculative sampling): whatever the draft proposes, each
generated token follows the target's distribution. A seeded statistical test on tiny models whose
distributions are far apart: the empirical distribution of each of three generated positions is
near the target's exact one (computed by enumerating every prefix) and far from the draft's."""

from __future__ import annotations

import pytest
import torch

import lamina
from lamina.errors import InputError

transformers = pytest.importorskip("transformers")

VOCAB = 12
PROMPT = torch.tensor([[1, 7, 3]])
TEMPERATURE = 0.8
SAMPLES = 1200


def _peaked_model(path, seed: int, layers: int):
    """A tiny random Mistral with weights of std 0.5, so its next-token distributions are peaked."""
    torch.manual_seed(seed)
    config = transformers.MistralConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=8, eos_token_id=None,
                                        bos_token_id=1, pad_token_id=0)
    model = transformers.MistralForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.5)
    model.save_pretrained(path)
    return lamina.AutoModelForCausalLM.from_pretrained(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return (_peaked_model(tmp_path_factory.mktemp("target"), 11, 2),
            _peaked_model(tmp_path_factory.mktemp("draft"), 12, 1))


@pytest.fixture
def one_thread():
    """Thousands of tiny products: one thread spends none of their time waking others."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _marginals(model, positions: int) -> list[torch.Tensor]:
    """Exact distributions `(vocab,)` of each of the first `positions` sampled tokens."""
    prefixes, weights, found = PROMPT, torch.ones(1), []
    with torch.no_grad():
        for _ in range(positions):
            probs = torch.softmax(model(prefixes).logits[:, -1].float() / TEMPERATURE, dim=-1)  # (prefixes, vocab)
            joint = weights[:, None] * probs
            found.append(joint.sum(dim=0))
            prefixes = torch.cat((prefixes.repeat_interleave(VOCAB, dim=0),
                                  torch.arange(VOCAB).repeat(prefixes.shape[0])[:, None]), dim=1)
            weights = joint.reshape(-1)
    return found


def _total_variation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().sum() / 2)


@pytest.mark.slow
def test_sampled_tokens_follow_the_target_distribution(models, one_thread):
    target, draft = models
    settings = dict(max_new_tokens=3, do_sample=True, temperature=TEMPERATURE, top_k=0, assistant_model=draft,
                    num_assistant_tokens=2)
    generator = torch.Generator().manual_seed(0)
    drawn = torch.cat([target.generate(PROMPT, generator=generator, **settings)[:, PROMPT.shape[1]:]
                       for _ in range(SAMPLES)])
    expected, drafted = _marginals(target, 3), _marginals(draft, 3)
    for position in range(3):
        empirical = torch.bincount(drawn[:, position], minlength=VOCAB).float() / SAMPLES
        assert _total_variation(empirical, expected[position]) < 0.06, position
        assert _total_variation(expected[position], drafted[position]) > 0.2, position  # the test can tell them apart


def test_sampling_with_itself_as_draft_accepts_its_own_draws(models):
    """With the target as its own draft every proposal is accepted (p / q = 1), so a seeded run is
    reproducible and plain greedy assisted decoding still equals greedy decoding."""
    target, _ = models
    settings = dict(max_new_tokens=6, do_sample=True, assistant_model=target, num_assistant_tokens=3)
    runs = [target.generate(PROMPT, generator=torch.Generator().manual_seed(seed), **settings) for seed in (4, 4, 5)]
    assert torch.equal(runs[0], runs[1]) and runs[0].shape[1] == PROMPT.shape[1] + 6
    greedy = target.generate(PROMPT, max_new_tokens=6)
    assert torch.equal(target.generate(PROMPT, max_new_tokens=6, assistant_model=target), greedy)


def test_batches_are_refused_as_in_transformers(models):
    target, draft = models
    with pytest.raises(InputError, match="one prompt"):
        target.generate(PROMPT.repeat(2, 1), do_sample=True, assistant_model=draft)
    with pytest.raises(InputError, match="num_return_sequences=2"):
        target.generate(PROMPT, do_sample=True, num_return_sequences=2, assistant_model=draft)
