"""Helpers for tests of the decode step."""

from __future__ import annotations

import torch


def assert_compiled_matches_eager(model, ids: torch.Tensor, max_new_tokens: int) -> None:
    """The compiled decode step (no fallback to eager) gives the eager step's tokens, and its logits
    to float32 summation order."""
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True)
    eager = model.generate(ids, disable_compile=True, **settings)
    compiled = model.generate(ids, compile_config={}, **settings)
    assert not getattr(model, "_compile_failed", False)
    assert torch.equal(compiled.sequences, eager.sequences)
    torch.testing.assert_close(torch.stack(compiled.logits), torch.stack(eager.logits), rtol=1e-4, atol=1e-4)
