"""Output dataclasses with transformers' field names and tuple order.

Indexing by position or `to_tuple()` skips the fields that are None, exactly as transformers'
`ModelOutput` does, so `return_dict=False` and `outputs[0]` mean the same thing in both libraries.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


# transformers 5.25 renamed `past_key_values` to `cache` (and kept the old name); here both name one field
_RENAMED = {"cache": "past_key_values"}


@dataclass
class ModelOutput:
    @property
    def cache(self) -> Any:
        """transformers' newer name for `past_key_values`."""
        return getattr(self, "past_key_values", None)

    def _field(self, key: str) -> str:
        return _RENAMED.get(key, key)

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            key = self._field(key)
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: str) -> bool:
        return self._field(key) in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        key = self._field(key)
        return getattr(self, key, default) if key in self.keys() else default


def finish(output: ModelOutput, return_dict: bool | None, config: Any) -> ModelOutput | tuple[Any, ...]:
    """What a forward returns: the dataclass, or its tuple when `return_dict` (None: the config's
    `return_dict`) is off."""
    return_dict = config.return_dict if return_dict is None else return_dict
    return output if return_dict else output.to_tuple()


Tensors = tuple[torch.Tensor, ...] | None


@dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class BaseModelOutputWithPast(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class MoeModelOutputWithPast(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors = None
    attentions: Tensors = None
    router_logits: Tensors = None


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: Tensors = None
    past_key_values: Any = None
    attentions: Tensors = None
    cross_attentions: Tensors = None


@dataclass
class BaseModelOutputWithPastAndCrossAttentions(ModelOutput):
    last_hidden_state: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors = None
    attentions: Tensors = None
    cross_attentions: Tensors = None


@dataclass
class CausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class CausalLMOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class CausalLMOutputWithCrossAttentions(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors = None
    attentions: Tensors = None
    cross_attentions: Tensors = None


@dataclass
class MoeCausalLMOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors = None
    attentions: Tensors = None
    router_logits: Tensors = None


@dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class SequenceClassifierOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class TokenClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class MaskedLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class NextSentencePredictorOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class MultipleChoiceModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class BertForPreTrainingOutput(ModelOutput):
    loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None
    hidden_states: Tensors = None
    attentions: Tensors = None


@dataclass
class MegatronBertForPreTrainingOutput(BertForPreTrainingOutput):
    pass


@dataclass
class MobileBertForPreTrainingOutput(BertForPreTrainingOutput):
    pass
