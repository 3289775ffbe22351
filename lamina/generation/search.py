"""Which loop `generate` runs besides its own: beam search (`num_beams > 1`, `beam.py`; diverse beam
search with `num_beam_groups > 1`, `group_beam.py`) or assisted decoding (`assistant_model=`,
`assisted.py`). They run the model's `forward`, not the decode step (the assistant's draft excepted)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UnsupportedError
from . import decoding
from .assisted import assisted_generate
from .beam import beam_search
from .config import GenerationConfig
from .group_beam import group_beam_search
from .processors import LogitsProcessor, build_processors
from .stopping import StoppingCriteriaList


def dispatch_search(
    model: Any,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    logits_processor: list[LogitsProcessor] | None,
    stopping: StoppingCriteriaList,
    assistant_model: Any,
    streamer: Any,
    generator: torch.Generator | None = None,
) -> Any:
    """The output of beam search or assisted decoding when `config` / the caller ask for one of them;
    None for `generate`'s own greedy or sampled loop. `input_ids (batch, prompt)` with its mask."""
    if config.num_beams > 1:
        if assistant_model is not None or streamer is not None:
            raise UnsupportedError("generate: beam search takes neither an assistant_model nor a streamer")
        # diverse beam search runs the processors a group of beams at a time
        beams_per_call = config.num_beams // config.num_beam_groups
        processors = build_processors(config, attention_mask.repeat_interleave(beams_per_call, dim=0), logits_processor)
        if config.num_beam_groups > 1:
            return group_beam_search(model, input_ids, attention_mask, config, processors, stopping, decoding._Buffers)
        return beam_search(model, input_ids, attention_mask, config, processors, stopping, decoding._Buffers, generator)
    if assistant_model is not None:
        processors = build_processors(config, attention_mask, logits_processor)
        return assisted_generate(model, assistant_model, input_ids, attention_mask, config, processors, stopping, streamer,
                                 generator)
    return None
