"""Helpers for tests of the decode step."""

from __future__ import annotations

import torch

from lamina.generation.step import decode_steps


def assert_compiled_matches_eager(model, ids: torch.Tensor, max_new_tokens: int) -> None:
    """The compiled decode step (no fallback to eager) gives the eager step's tokens, and its logits
    to float32 summation order."""
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True)
    native = model.__dict__.get("native_decode", True)
    model.native_decode = False  # the compiled step, not lamina's native one, which would serve both
    try:
        eager = model.generate(ids, disable_compile=True, **settings)
        compiled = model.generate(ids, compile_config={}, **settings)
    finally:
        model.native_decode = native
    assert not decode_steps(model).compile_failed
    assert torch.equal(compiled.sequences, eager.sequences)
    torch.testing.assert_close(torch.stack(compiled.logits), torch.stack(eager.logits), rtol=1e-4, atol=1e-4)


def assert_native_matches_eager(model, **inputs) -> None:
    """lamina's native step runs (`generation.native_step`) and gives the eager step's tokens and its
    logits bit for bit: the kernel sums in the eager step's order (float32 and quantized layers)."""
    settings = dict(do_sample=False, output_logits=True, return_dict_in_generate=True, **inputs)
    native = model.generate(**settings)
    assert decode_steps(model).last_kind == "native"
    switch = model.__dict__.get("native_decode", True)
    model.native_decode = False
    try:
        eager = model.generate(disable_compile=True, **settings)
        assert decode_steps(model).last_kind == "eager"
    finally:
        model.native_decode = switch
    assert torch.equal(native.sequences, eager.sequences)
    torch.testing.assert_close(torch.stack(native.logits), torch.stack(eager.logits), rtol=0, atol=0)
