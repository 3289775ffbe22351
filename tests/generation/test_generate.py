"""Greedy and sampled `generate` against transformers' on tiny random Mistral, Ministral and Mixtral."""

from __future__ import annotations

import pytest
import torch

import lamina
from lamina.errors import InputError
from lamina.generation import GenerationConfig

transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
FAMILIES = {
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=6)),
    "ministral": ("MinistralConfig", "MinistralForCausalLM", dict(
        sliding_window=5, layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(sliding_window=7, num_local_experts=4, num_experts_per_tok=2)),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    """(transformers model, lamina model) with the same weights, fp32, eager attention."""
    config_name, model_name, extra = FAMILIES[request.param]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**TINY, **extra)
    reference = getattr(transformers, model_name)(config).eval()
    path = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(path)
    ours = lamina.AutoModelForCausalLM.from_pretrained(path)
    return reference, ours


def _prompts(lengths, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, TINY["vocab_size"], (n,), generator=generator) for n in lengths]


def _left_pad(prompts):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = p
        mask[row, width - len(p):] = 1
    return ids, mask


def _both(pair, **kwargs):
    reference, ours = pair
    settings = dict(do_sample=False, max_new_tokens=12, eos_token_id=None, pad_token_id=0)
    settings.update(kwargs)
    expected = reference.generate(**settings)
    found = ours.generate(**settings)
    return expected, found


def test_greedy_single_prompt(pair):
    ids, mask = _left_pad(_prompts([4]))
    expected, found = _both(pair, input_ids=ids, attention_mask=mask)
    assert found.shape == expected.shape
    assert torch.equal(found, expected)


def test_greedy_left_padded_batch_equals_reference_and_single_rows(pair):
    prompts = _prompts([3, 7, 10], seed=2)
    ids, mask = _left_pad(prompts)
    expected, found = _both(pair, input_ids=ids, attention_mask=mask)
    assert torch.equal(found, expected)
    _, ours = pair
    for row, prompt in enumerate(prompts):
        alone = ours.generate(prompt[None], max_new_tokens=12, eos_token_id=None)
        assert torch.equal(alone[0, len(prompt):], found[row, ids.shape[1]:])


def test_prompt_longer_than_window_and_generation_crossing_it(pair):
    ids, mask = _left_pad(_prompts([15, 9], seed=3))
    expected, found = _both(pair, input_ids=ids, attention_mask=mask, max_new_tokens=20)
    assert torch.equal(found, expected)
    for kind in ("dynamic", "static"):
        assert torch.equal(pair[1].generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=None,
                                            cache_implementation=kind), expected)
    no_cache = pair[1].generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=None, use_cache=False)
    assert torch.equal(no_cache, expected)
    with pytest.raises(lamina.UnsupportedError, match="cache_implementation 'offloaded'"):
        pair[1].generate(ids, max_new_tokens=2, cache_implementation="offloaded")


def test_eos_in_the_middle_of_a_batch(pair):
    ids, mask = _left_pad(_prompts([5, 8, 6], seed=4))
    _, free = _both(pair, input_ids=ids, attention_mask=mask, max_new_tokens=10)
    generated = free[:, ids.shape[1]:]
    # an end token that one row produces mid-way and that no row produced before
    row, step = next((r, s) for s in range(2, 9) for r in range(3)
                     if generated[r, s] not in generated[:, :s] and (generated[:, s] == generated[r, s]).sum() == 1)
    eos = int(generated[row, step])
    expected, found = _both(pair, input_ids=ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos)
    assert torch.equal(found, expected)
    assert (found[row, ids.shape[1] + step + 1:] == 0).all()  # the finished row is padded
    assert found.shape[1] == free.shape[1]  # the other rows went on


def test_stop_when_every_row_ends(pair):
    ids, mask = _left_pad(_prompts([5], seed=5))
    _, free = _both(pair, input_ids=ids, attention_mask=mask, max_new_tokens=10)
    eos = int(free[0, ids.shape[1] + 2])
    expected, found = _both(pair, input_ids=ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[eos, 96])
    assert torch.equal(found, expected)
    assert found.shape[1] <= ids.shape[1] + 3


def test_scores_equal_reference(pair):
    ids, mask = _left_pad(_prompts([4, 6], seed=6))
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, return_dict_in_generate=True,
                  output_scores=True, repetition_penalty=1.3)
    expected, found = _both(pair, **kwargs)
    assert torch.equal(found.sequences, expected.sequences)
    assert len(found.scores) == len(expected.scores) == 5
    for ours, theirs in zip(found.scores, expected.scores):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_min_new_tokens_delays_eos(pair):
    ids, mask = _left_pad(_prompts([5], seed=5))
    _, free = _both(pair, input_ids=ids, attention_mask=mask, max_new_tokens=10)
    eos = int(free[0, ids.shape[1]])
    expected, found = _both(pair, input_ids=ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos,
                            min_new_tokens=4)
    assert torch.equal(found, expected)
    assert found.shape[1] > ids.shape[1] + 4


def test_sampling_is_reproducible_and_top_k_1_is_greedy(pair):
    _, ours = pair
    ids, mask = _left_pad(_prompts([4, 7], seed=7))
    sample = dict(input_ids=ids, attention_mask=mask, max_new_tokens=15, do_sample=True, temperature=1.5, top_p=0.95,
                  eos_token_id=None)
    first = ours.generate(**sample, generator=torch.Generator().manual_seed(3))
    second = ours.generate(**sample, generator=torch.Generator().manual_seed(3))
    other = ours.generate(**sample, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    greedy = ours.generate(input_ids=ids, attention_mask=mask, max_new_tokens=15, eos_token_id=None)
    top1 = ours.generate(input_ids=ids, attention_mask=mask, max_new_tokens=15, do_sample=True, top_k=1,
                         eos_token_id=None, generator=torch.Generator().manual_seed(5))
    assert torch.equal(top1, greedy)


def test_num_return_sequences_and_generation_config(pair, tmp_path):
    _, ours = pair
    ids = _prompts([4], seed=8)[0][None]
    out = ours.generate(ids, num_return_sequences=3, do_sample=True, max_new_tokens=6, eos_token_id=None,
                        generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 10)
    assert all(torch.equal(row[:4], ids[0]) for row in out)
    config = GenerationConfig(max_new_tokens=3, eos_token_id=None)
    assert ours.generate(ids, generation_config=config).shape == (1, 7)


def test_generation_config_json_sets_defaults(pair, tmp_path):
    reference, _ = pair
    reference.generation_config.max_new_tokens = 4
    reference.generation_config.eos_token_id = None
    reference.save_pretrained(tmp_path)
    reference.generation_config.max_new_tokens = None
    model = lamina.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.generation_config.max_new_tokens == 4
    ids = _prompts([5], seed=9)[0][None]
    assert model.generate(ids).shape == (1, 9)
    model.save_pretrained(tmp_path / "again")
    assert GenerationConfig.from_pretrained(tmp_path / "again").max_new_tokens == 4


def test_bad_arguments_name_the_problem(pair):
    _, ours = pair
    ids = _prompts([3])[0][None]
    with pytest.raises(InputError, match="unknown argument"):
        ours.generate(ids, max_new_token=3)
    with pytest.raises(lamina.ConfigError, match="top_p"):
        ours.generate(ids, do_sample=True, top_p=1.5)
    with pytest.raises(lamina.ConfigError, match="num_return_sequences: expected at most num_beams"):
        ours.generate(ids, num_return_sequences=2)
    with pytest.raises(InputError, match="max_length is 2"):
        ours.generate(ids, max_length=2)
    with pytest.raises(lamina.UnsupportedError, match="penalty_alpha=0.6 is not supported"):
        ours.generate(ids, penalty_alpha=0.6)
    assert GenerationConfig(typical_p=1.0, suppress_tokens=None).typical_p == 1.0  # "off" values load
    with pytest.raises(lamina.UnsupportedError, match="typical_p=0.9"):
        GenerationConfig(typical_p=0.9)


@pytest.mark.parametrize("interval", [3, 5])
def test_checking_for_the_end_every_few_steps_gives_the_same_output(pair, monkeypatch, interval):
    """The device path checks "all rows finished?" every few steps, then trims what it ran past."""
    from lamina.generation import decoding

    monkeypatch.setattr(decoding, "stop_check_interval", lambda device, streaming: interval)
    ids, mask = _left_pad(_prompts([5, 8], seed=11))
    _, free = _both(pair, input_ids=ids, attention_mask=mask, max_new_tokens=12)
    generated = free[:, ids.shape[1]:]
    for stop in (1, 4, 7):  # both rows end at `stop` (or earlier) on their own end token
        eos = [int(generated[0, stop]), int(generated[1, stop])]
        kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos,
                      return_dict_in_generate=True, output_scores=True)
        expected, found = _both(pair, **kwargs)
        assert torch.equal(found.sequences, expected.sequences)
        assert len(found.scores) == len(expected.scores)


def test_sampling_draws_what_transformers_draws_from_the_same_seed(pair):
    """Both sample with one torch.multinomial per step from the same processed distribution, so
    the same global seed gives the same tokens."""
    reference, ours = pair
    ids, mask = _left_pad(_prompts([4, 7, 6], seed=12))
    settings = dict(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=True, temperature=0.9, top_k=20,
                    top_p=0.8, min_p=0.02, repetition_penalty=1.1, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(123)
    expected = reference.generate(**settings)
    torch.manual_seed(123)
    found = ours.generate(**settings)
    assert torch.equal(found, expected)
