"""What every pipeline shares: options given once or per call, inputs cut into chunks, chunks
run through the model `batch_size` at a time, and the chunks of each input gathered for its answer.

A task subclass says how one input becomes chunks (`preprocess`), what the model computes for a
padded batch of chunks (`forward`) and how the outputs of one input's chunks become its answer
(`postprocess`). Batches are padded as transformers' pipelines pad them (its `pad_collate_fn`):
on the tokenizer's padding side, `input_ids` with the pad id, `p_mask` and
`special_tokens_mask` with 1, everything else with 0; each chunk then gets back its own row of
the padded batch, so answers do not depend on `batch_size` beyond float rounding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from ..errors import InputError, TokenizerError

# per-token fields padded with 1 (they mark tokens that cannot be an answer or are special)
PAD_WITH_ONE = ("p_mask", "special_tokens_mask")


class Pipeline(ABC):
    """A model and its tokenizer behind one call, answering as transformers' pipeline of the same task.

    `options` given here are the defaults of every call; a call's own options override them.
    """

    task = ""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int | None = None, **options: Any) -> None:
        if tokenizer is None:
            raise InputError(f"pipeline({self.task!r}): pass tokenizer= (a lamina tokenizer or the path of one)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size or 1
        self.options = options

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _options(self, call: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """(the options of this call over the pipeline's own, the batch size)."""
        options = {**self.options, **call}
        batch_size = options.pop("batch_size", None) or self.batch_size
        if batch_size < 1:
            raise InputError(f"batch_size: expected a positive integer, found {batch_size}")
        return options, batch_size

    def answer(self, inputs: Any, call: dict[str, Any]) -> Any:
        """The answer of one input, or the list of answers of a list of inputs."""
        options, batch_size = self._options(call)
        if isinstance(inputs, list):
            return self.run(inputs, options, batch_size)
        return self.run([inputs], options, batch_size)[0]

    def run(self, items: list[Any], options: dict[str, Any], batch_size: int) -> list[Any]:
        """The answer of each item: its chunks, run `batch_size` chunks at a time, then gathered."""
        params = self.parameters(**options)
        chunks = [(index, chunk) for index, item in enumerate(items) for chunk in self.preprocess(item, params)]
        if batch_size > 1 and len(chunks) > 1 and self.tokenizer.pad_token_id is None:
            raise TokenizerError(
                f"pipeline({self.task!r}): batch_size={batch_size} needs a pad token to pad batches, and the "
                "tokenizer has none; set tokenizer.pad_token (for example to tokenizer.eos_token)"
            )
        outputs: list[dict[str, Any]] = []
        for start in range(0, len(chunks), batch_size):
            outputs += self._forward_batch([chunk for _, chunk in chunks[start : start + batch_size]], params)
        gathered: list[list[dict[str, Any]]] = [[] for _ in items]
        for (index, _), output in zip(chunks, outputs):
            gathered[index].append(output)
        return [self.postprocess(group, params) for group in gathered]

    def _forward_batch(self, chunks: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
        """Each chunk with its row of the padded batch (`tensors`) and of the model's outputs (`outputs`)."""
        tensors = collate([chunk["tensors"] for chunk in chunks], self.tokenizer)
        inputs = {k: v.to(self.device) for k, v in tensors.items() if k in self.model_inputs()}
        with torch.inference_mode():
            outputs = self.forward(inputs, params)
        return [
            {
                **chunk,
                "tensors": {key: value[row : row + 1] for key, value in tensors.items()},
                "outputs": {key: value[row : row + 1].cpu() for key, value in outputs.items()},
            }
            for row, chunk in enumerate(chunks)
        ]

    def model_inputs(self) -> set[str]:
        """The tokenizer outputs the model is called with (transformers: the tokenizer's `model_input_names`)."""
        return {"input_ids", "attention_mask", *self.tokenizer.model_input_names}

    # ---- what each task defines --------------------------------------------------------------
    @abstractmethod
    def parameters(self, **options: Any) -> dict[str, Any]:
        """The call's options checked and completed with the task's defaults."""

    @abstractmethod
    def preprocess(self, item: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
        """One input as chunks: dicts whose `tensors` are `(1, seq, …)` tensors (model inputs and
        per-token fields padded with the batch) and whose other keys the postprocessing reads."""

    def forward(self, inputs: dict[str, torch.Tensor], params: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The model's outputs for a padded batch, as tensors whose first dimension is the batch."""
        outputs = self.model(**inputs)
        return {key: value for key, value in outputs.items() if isinstance(value, torch.Tensor)}

    @abstractmethod
    def postprocess(self, chunks: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        """The answer of one input from its chunks (each with its `tensors` and `outputs` rows)."""


def collate(rows: list[dict[str, torch.Tensor]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """`(1, seq, …)` tensors of several chunks as one `(batch, longest, …)` tensor per key, padded on
    the tokenizer's side (see the module docstring for the values)."""
    if len(rows) == 1:
        return dict(rows[0])
    side = tokenizer.padding_side
    batch = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        longest = max(value.shape[1] for value in values)
        fill = tokenizer.pad_token_id if key == "input_ids" else 1 if key in PAD_WITH_ONE else 0
        padded = values[0].new_full((len(values), longest, *values[0].shape[2:]), fill)
        for index, value in enumerate(values):
            length = value.shape[1]
            if side == "left":
                padded[index, longest - length :] = value[0]
            else:
                padded[index, :length] = value[0]
        batch[key] = padded
    return batch


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension in float32, as transformers' pipelines take it (numpy)."""
    return torch.softmax(logits.float(), dim=-1)


def check_unknown(task: str, unknown: dict[str, Any]) -> None:
    if unknown:
        raise InputError(f"pipeline({task!r}): unknown option(s) {sorted(unknown)}")
