"""Helpers for comparing lamina with transformers (the reference) on tiny random models."""

from __future__ import annotations

from pathlib import Path

import torch

from lamina.modeling import PreTrainedModel


def save_reference(reference: torch.nn.Module, directory: Path) -> Path:
    """Save a transformers model (seeded, eval mode) where lamina will load it."""
    reference.save_pretrained(directory)
    return directory


def max_diff(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """Largest absolute difference, over the positions `where` selects (e.g. non-padding tokens)."""
    if where is not None:
        a, b = a[where.bool()], b[where.bool()]
    return (a.float() - b.float()).abs().max().item()


def grads_by_reference_name(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """lamina's parameter gradients, mapped to the reference's parameter names and layouts."""
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return model.checkpoint_state_dict(grads)


def compare_grads(model: PreTrainedModel, reference: torch.nn.Module, atol: float = 1e-4) -> None:
    """Every reference parameter's gradient equals lamina's.

    Reference names are looked up in lamina's own names (where the reference keeps the same layout
    in memory, as transformers 5 does for stacked experts) and then in the checkpoint names lamina's
    name map produces.
    """
    raw = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    mapped = grads_by_reference_name(model)
    theirs = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    tied = getattr(model.config, "tie_word_embeddings", False)
    for name, grad in theirs.items():
        ours = raw.get(name, mapped.get(name))
        if ours is None and tied and name == "lm_head.weight":
            continue
        assert ours is not None, f"the reference has a gradient for {name}, lamina has none"
        diff = (ours.float() - grad.float()).abs().max().item()
        assert diff <= atol, f"gradient of {name} differs by {diff}"
    assert len(theirs) >= len(raw) - (1 if tied else 0), "lamina has gradients the reference lacks"
