"""What training tools (peft, `transformers.Trainer`, TRL) call on a model besides `forward`:
input gradients for adapters over a frozen model, and whether gradient checkpointing is on."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import UnsupportedError


class TrainingMixin:
    """Mixed into `PreTrainedModel`."""

    # whether `forward` takes `num_items_in_batch`; True on the causal LMs, as transformers' take it:
    # then `Trainer` (and TRL) pass the labelled tokens of a whole gradient accumulation step and
    # leave the loss unscaled; otherwise losses are means over the batch that the trainer averages
    accepts_loss_kwargs = False

    def enable_input_require_grads(self) -> None:
        """Make the input embeddings' output require gradients, so that gradient checkpointing
        over a frozen base (adapters, QLoRA) still has a graph to recompute through."""

        def require_grads(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            output.requires_grad_(True)

        self.disable_input_require_grads()
        self.__dict__["_input_grads_hook"] = self.get_input_embeddings().register_forward_hook(require_grads)

    def disable_input_require_grads(self) -> None:
        hook = self.__dict__.pop("_input_grads_hook", None)
        if hook is not None:
            hook.remove()

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """transformers' newer name for `gradient_checkpointing_enable` (what `Trainer` calls): every
        decoder layer is recomputed in the backward pass; lamina neither skips layers nor offloads."""
        if every_n_layers != 1 or offload:
            raise UnsupportedError(
                f"activation checkpointing: lamina checkpoints every layer on the device (every_n_layers=1, "
                f"offload=False), found every_n_layers={every_n_layers}, offload={offload}")
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs)

    def activation_checkpointing_disable(self) -> None:
        self.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())

    is_activation_checkpointing = is_gradient_checkpointing

    def add_model_tags(self, tags: list[str] | str) -> None:
        """Tags a trainer records for the model card (`model_tags`), kept in order without repeats."""
        kept = self.__dict__.setdefault("model_tags", [])
        kept.extend(tag for tag in ([tags] if isinstance(tags, str) else tags) if tag not in kept)
