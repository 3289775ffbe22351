"""What every model's `forward` does around its layers, written once for the decoder, GPT-2, MEGA
and the BERT-style encoders: the input check, the flags, cache and positions (`prepare_inputs`),
and the layer loop with its gradient checkpointing (`run_layer_stack`); `outputs.finish` makes the
`return_dict` choice after them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..cache import Cache
from ..errors import InputError
from ..modeling import PreTrainedModel


@dataclass
class ForwardInputs:
    """A forward's arguments with every default resolved against the model and its config."""

    batch: int
    seq: int
    output_attentions: bool
    output_hidden_states: bool
    use_cache: bool
    return_dict: bool
    past_key_values: Cache | None
    past_length: int  # tokens the cache held before this call
    cache_position: torch.LongTensor  # (seq,) absolute positions of the new tokens
    position_ids: torch.LongTensor  # (batch, seq)


def given_input(input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
    """The one of `input_ids (batch, seq)` and `inputs_embeds (batch, seq, hidden)` that was passed."""
    if (input_ids is None) == (inputs_embeds is None):
        raise InputError("pass exactly one of input_ids and inputs_embeds")
    return input_ids if input_ids is not None else inputs_embeds


def prepare_inputs(
    model: PreTrainedModel,
    input_ids: torch.LongTensor | None,
    inputs_embeds: torch.Tensor | None,
    vocab_size: int,
    *,
    output_attentions: bool | None,
    output_hidden_states: bool | None,
    return_dict: bool | None,
    use_cache: bool | None = None,
    can_cache: bool = False,
    past_key_values: Cache | None = None,
    cache_position: torch.LongTensor | None = None,
    position_ids: torch.LongTensor | None = None,
) -> ForwardInputs:
    """Check that exactly one of `input_ids (batch, seq)` / `inputs_embeds (batch, seq, hidden)` is
    given (ids inside `[0, vocab_size)`), take each unset flag from the config, and resolve the cache
    and positions.

    `use_cache` unset means the config's `use_cache` where the model `can_cache`; it is off while
    training with gradient checkpointing (the recomputed layers would write the cache twice). A
    cache asked for and not given is made by `model.make_cache()`.
    """
    reference = given_input(input_ids, inputs_embeds)
    model.check_token_ids(input_ids, vocab_size)
    config = model.config
    batch, seq = reference.shape[:2]
    if use_cache is None:
        use_cache = bool(getattr(config, "use_cache", True)) and can_cache
    if model.gradient_checkpointing and model.training:
        use_cache = False
    if use_cache and past_key_values is None:
        past_key_values = model.make_cache()
    past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
    if cache_position is None:
        cache_position = torch.arange(past_length, past_length + seq, device=reference.device)
    if position_ids is None:
        position_ids = cache_position[None].expand(batch, -1)
    return ForwardInputs(
        batch=batch,
        seq=seq,
        output_attentions=config.output_attentions if output_attentions is None else output_attentions,
        output_hidden_states=config.output_hidden_states if output_hidden_states is None else output_hidden_states,
        use_cache=use_cache,
        return_dict=config.return_dict if return_dict is None else return_dict,
        past_key_values=past_key_values,
        past_length=past_length,
        cache_position=cache_position,
        position_ids=position_ids,
    )


def run_layer_stack(
    model: PreTrainedModel,
    layers: Sequence[nn.Module],
    hidden: torch.Tensor,
    layer_args: tuple[Any, ...],
    caches: Cache | None,
    output_attentions: bool,
    output_hidden_states: bool,
) -> tuple[torch.Tensor, list[torch.Tensor], list[list[Any]]]:
    """Run `layer(hidden, *layer_args, cache, output_attentions) -> (hidden, *extras)` over the
    layers, each recomputed in the backward pass when `model` trains with gradient checkpointing.

    Returns the last hidden state `(batch, seq, hidden)`, each layer's input (when
    `output_hidden_states`) and, for each extra a layer returns (attention weights, router logits),
    the list of its values over the layers.
    """
    checkpointing = model.gradient_checkpointing and model.training
    all_hidden, extras = [], []
    for index, layer in enumerate(layers):
        if output_hidden_states:
            all_hidden.append(hidden)
        arguments = (hidden, *layer_args, caches[index] if caches is not None else None, output_attentions)
        if checkpointing:
            hidden, *rest = checkpoint(layer, *arguments, use_reentrant=False)
        else:
            hidden, *rest = layer(*arguments)
        extras.append(rest)
    return hidden, all_hidden, [list(column) for column in zip(*extras)]

