"""What training tools (peft, `transformers.Trainer`, TRL) call on a model besides `forward`:
input gradients for adapters over a frozen model, and whether gradient checkpointing is on."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TrainingMixin:
    """Mixed into `PreTrainedModel`."""

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

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())
