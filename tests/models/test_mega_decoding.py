"""MEGA incremental decoding against lamina's own full forward (the 4.x reference cannot decode
with chunking, nor take prompts that are not whole chunks), the EMA against its definition, and
the errors for what cannot be cached."""

from __future__ import annotations

import pytest
import torch

from lamina import InputError, MegaConfig, MegaForCausalLM, MegaModel, UnsupportedError
from lamina.layers.ema import MultiDimensionDampedEMA

VOCAB = 40


def causal_lm(seed: int = 0, **overrides) -> MegaForCausalLM:
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, intermediate_size=24, ema_projection_size=4,
        shared_representation_size=8, nffn_hidden_size=32, max_positions=64, is_decoder=True, bidirectional=False,
        eos_token_id=None,
    )
    model = MegaForCausalLM(MegaConfig(**{**settings, **overrides})).eval()
    with torch.no_grad():  # larger than the init, so that every weight shows and greedy tokens vary
        for name, param in model.named_parameters():
            if param.dim() == 2 and "ema_gate" not in name:
                torch.nn.init.normal_(param, std=param.shape[-1] ** -0.5)
            else:
                param.add_(0.1 * torch.randn_like(param))
    return model


VARIANTS = {
    "chunked-softmax-rotary": dict(use_chunking=True, chunk_size=4),
    "chunked-laplace-simple": dict(use_chunking=True, chunk_size=4, attention_activation="laplace",
                                   relative_positional_bias="simple"),
    "chunked-relu2-layernorm-postnorm": dict(use_chunking=True, chunk_size=5, attention_activation="relu2",
                                             normalization_type="layernorm", normalize_before_mega=False),
    "full-softmax-simple": dict(relative_positional_bias="simple"),
    "full-laplace-batchnorm": dict(attention_activation="laplace", normalization_type="batchnorm"),
}


def full_logits(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask, use_cache=False).logits


def decode_in_pieces(model, ids, pieces, mask=None):
    """Logits of `ids` fed through the cache in pieces of the given lengths."""
    cache, logits, start = None, [], 0
    with torch.no_grad():
        for size in pieces:
            end = start + size
            out = model(ids[:, start:end], attention_mask=None if mask is None else mask[:, :end],
                        past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits)
            start = end
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("prompt", [1, 4, 6])
def test_token_by_token_decoding_equals_full_forward(variant, prompt):
    model = causal_lm(**VARIANTS[variant])
    ids = torch.randint(3, VOCAB, (2, 11))
    want = full_logits(model, ids)
    got, cache = decode_in_pieces(model, ids, [prompt] + [1] * (11 - prompt))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert cache.get_seq_length() == 11


@pytest.mark.parametrize("variant", VARIANTS)
def test_multi_token_continuations_cross_chunk_boundaries(variant):
    model = causal_lm(**VARIANTS[variant])
    ids = torch.randint(3, VOCAB, (2, 23))
    got, _ = decode_in_pieces(model, ids, [3, 2, 6, 1, 9, 2])
    torch.testing.assert_close(got, full_logits(model, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["chunked-softmax-rotary", "full-softmax-simple", "full-laplace-batchnorm"])
def test_cached_decoding_with_left_padding_equals_full_forward(variant):
    model = causal_lm(**VARIANTS[variant])
    ids = torch.randint(3, VOCAB, (2, 13))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, :3] = 0
    ids[1, :3] = 1
    want = full_logits(model, ids, mask)
    got, _ = decode_in_pieces(model, ids, [6] + [1] * 7, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)
    assert torch.isfinite(got).all()


def test_left_padding_does_not_change_softmax_outputs_without_chunking():
    # relative positions and masked keys make left padding invisible (not so with chunking, where
    # padding moves the chunk boundaries, nor for laplace / relu2, which divide by the position)
    model = causal_lm(**VARIANTS["full-softmax-simple"])
    ids = torch.randint(3, VOCAB, (1, 9))
    padded = torch.cat((torch.ones(1, 3, dtype=torch.long), ids), dim=1)
    mask = torch.cat((torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)), dim=1)
    torch.testing.assert_close(full_logits(model, padded, mask)[:, 3:], full_logits(model, ids), atol=1e-4, rtol=0)


def test_chunked_cache_is_bounded_by_the_chunk():
    model = causal_lm(**VARIANTS["chunked-softmax-rotary"])
    ids = torch.randint(3, VOCAB, (1, 30))
    _, cache = decode_in_pieces(model, ids, [7] + [1] * 23)
    sizes = {cache[i].keys.shape[1] for i in range(len(cache))}
    assert sizes == {4}
    before = cache.nbytes()
    with torch.no_grad():
        model(ids[:, :5], past_key_values=cache, use_cache=True)
    assert cache.nbytes() == before


def test_unchunked_cache_keeps_every_key():
    model = causal_lm(**VARIANTS["full-softmax-simple"])
    _, cache = decode_in_pieces(model, torch.randint(3, VOCAB, (1, 10)), [4, 1, 5])
    assert cache[0].keys.shape[1] == 10 and cache[0].ema_state.shape == (1, 16, 4)


@pytest.mark.parametrize("variant", ["chunked-softmax-rotary", "chunked-laplace-simple", "full-laplace-batchnorm"])
def test_generate_with_cache_equals_generate_without(variant):
    model = causal_lm(**VARIANTS[variant])
    prompt = torch.randint(3, VOCAB, (2, 6))
    cached = model.generate(prompt, max_new_tokens=11, do_sample=False, use_cache=True)
    recomputed = model.generate(prompt, max_new_tokens=11, do_sample=False, use_cache=False)
    assert cached.tolist() == recomputed.tolist()
    assert len(set(cached[:, 6:].flatten().tolist())) > 2  # the test model does not just repeat one token


def test_left_padded_batch_generation_equals_per_sample():
    model = causal_lm(**VARIANTS["full-softmax-simple"])
    long_prompt, short_prompt = torch.randint(3, VOCAB, (1, 7)), torch.randint(3, VOCAB, (1, 4))
    batch = torch.cat((long_prompt, torch.cat((torch.ones(1, 3, dtype=torch.long), short_prompt), dim=1)))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0
    together = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
    alone = [model.generate(p, max_new_tokens=8, do_sample=False) for p in (long_prompt, short_prompt)]
    assert together[0].tolist() == alone[0][0].tolist()
    assert together[1, 3:].tolist() == alone[1][0].tolist()


def test_beam_reorder_keeps_rows_consistent():
    model = causal_lm(**VARIANTS["chunked-softmax-rotary"])
    ids = torch.randint(3, VOCAB, (2, 9))
    _, cache = decode_in_pieces(model, ids[:, :6], [6])
    cache.reorder_cache(torch.tensor([1, 1]))
    with torch.no_grad():
        step = model(ids[[1, 1], 6:9], past_key_values=cache, use_cache=True).logits
    torch.testing.assert_close(step, full_logits(model, ids[[1, 1]])[:, 6:9], atol=1e-4, rtol=0)


# -- the EMA against its definition -----------------------------------------------------------------


def ema_by_definition(ema: MultiDimensionDampedEMA, x: torch.Tensor) -> torch.Tensor:
    """O(L²) sums straight from the kernel: forward taps, plus backward taps when bidirectional."""
    length = x.shape[1]
    kernel = ema.kernel(length)
    forward, backward = kernel.split(ema.hidden_size) if ema.bidirectional else (kernel, None)
    out = torch.zeros_like(x)
    for t in range(length):
        for lag in range(length):
            if ema.truncation is not None and lag >= ema.truncation:
                break
            if t - lag >= 0:
                out[:, t] += forward[:, lag] * x[:, t - lag]
            if backward is not None and t + lag < length:
                out[:, t] += backward[:, lag] * x[:, t + lag]
    return torch.nn.functional.silu(out + x * ema.residual_weight)


def random_ema(seed: int, bidirectional: bool = False, truncation: int | None = None) -> MultiDimensionDampedEMA:
    torch.manual_seed(seed)
    ema = MultiDimensionDampedEMA(6, 3, bidirectional, truncation)
    for param in ema.parameters():
        torch.nn.init.normal_(param)
    return ema


@pytest.mark.parametrize("bidirectional,truncation", [(False, None), (True, None), (False, 3), (True, 4)])
def test_fft_ema_equals_its_definition(bidirectional, truncation):
    ema = random_ema(0, bidirectional, truncation)
    x = torch.randn(2, 9, 6)
    with torch.no_grad():
        got, _ = ema(x)
        torch.testing.assert_close(got, ema_by_definition(ema, x), atol=1e-5, rtol=0)


def test_ema_recurrence_equals_fft_in_any_split():
    ema = random_ema(1)
    x = torch.randn(2, 12, 6)
    with torch.no_grad():
        want, _ = ema(x)
        pieces, state, start = [], None, 0
        for size in (5, 1, 1, 4, 1):
            out, state = ema(x[:, start:start + size], state=state, return_state=True)
            pieces.append(out)
            start += size
    torch.testing.assert_close(torch.cat(pieces, dim=1), want, atol=1e-5, rtol=0)


# -- what cannot be cached, and bad inputs ------------------------------------------------------------


def test_bidirectional_models_refuse_a_cache():
    model = causal_lm(bidirectional=True)
    ids = torch.randint(3, VOCAB, (1, 5))
    with pytest.raises(UnsupportedError, match="bidirectional"):
        model(ids, use_cache=True)
    assert model(ids).past_key_values is None  # by default such a model simply does not cache


def test_truncated_ema_refuses_a_cache():
    with pytest.raises(UnsupportedError, match="truncation"):
        causal_lm(truncation=4)(torch.randint(3, VOCAB, (1, 5)), use_cache=True)


def test_simple_bias_names_its_limit():
    model = causal_lm(relative_positional_bias="simple", max_positions=8)
    with pytest.raises(InputError, match="max_positions"):
        model(torch.randint(3, VOCAB, (1, 9)), use_cache=False)


def test_attention_mask_of_the_wrong_length_is_refused():
    model = causal_lm()
    _, cache = decode_in_pieces(model, torch.randint(3, VOCAB, (1, 5)), [5])
    with pytest.raises(InputError, match="attention_mask"):
        model(torch.randint(3, VOCAB, (1, 1)), attention_mask=torch.ones(1, 3), past_key_values=cache)


def test_cross_attention_is_refused():
    with pytest.raises(UnsupportedError, match="cross-attention"):
        MegaModel(MegaConfig(hidden_size=16, num_hidden_layers=1, is_decoder=True, add_cross_attention=True))


def test_bfloat16_decoding_stays_close_to_float32():
    model = causal_lm(**VARIANTS["chunked-softmax-rotary"])
    ids = torch.randint(3, VOCAB, (2, 10))
    want = full_logits(model, ids)
    model.to(torch.bfloat16)
    got, _ = decode_in_pieces(model, ids, [5, 1, 1, 3])
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.15, rtol=0.05)
