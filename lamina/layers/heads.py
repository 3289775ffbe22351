"""Task heads' losses and pooling, shared by every family, with transformers' rules:
`-100` ignored, labels shifted inside the causal-LM loss, `problem_type` chosen from the labels
when the config leaves it unset, QA positions clamped to the sequence and ignored past it; and the
one extractive question-answering head of every family."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..config import PretrainedConfig
from ..errors import InputError
from ..outputs import QuestionAnsweringModelOutput, finish
from .linear import Linear


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Cross-entropy of token t predicting label t+1; `logits (batch, seq, vocab)`.

    The mean over the labelled tokens, or with `num_items_in_batch` (what `Trainer` counts over all
    the batches of one gradient accumulation step) their sum divided by it, as transformers' loss does:
    then uneven token counts weigh each token alike across the accumulated batches.
    """
    shifted = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    flat_logits, flat_labels = logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1).to(logits.device)
    if num_items_in_batch is None:
        return F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device), ignore_index=ignore_index
    )


def sequence_classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, config: PretrainedConfig
) -> torch.Tensor:
    """Regression, single-label or multi-label loss on pooled `logits (batch, num_labels)`.

    Like the reference, an unset `config.problem_type` is decided from the labels and stored.
    """
    num_labels = config.num_labels
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(logits.device)
    if config.problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.float().view(-1, num_labels), labels.view(-1), ignore_index=-100)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def token_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1).to(logits.device), ignore_index=-100)


def question_answering_loss(
    start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor, end_positions: torch.Tensor
) -> torch.Tensor:
    """Mean of start and end cross-entropies; positions past the sequence are ignored."""
    if start_positions.dim() > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    ignored = start_logits.size(1)
    start = start_positions.clamp(0, ignored).to(start_logits.device)
    end = end_positions.clamp(0, ignored).to(end_logits.device)
    start_loss = F.cross_entropy(start_logits.float(), start, ignore_index=ignored)
    end_loss = F.cross_entropy(end_logits.float(), end, ignore_index=ignored)
    return (start_loss + end_loss) / 2


def last_token_index(input_ids: torch.Tensor | None, pad_token_id: int | None, batch_size: int) -> torch.Tensor | int:
    """Index of each row's last non-pad token (left or right padding), as the reference pools.

    Without a pad token only a batch of one can be pooled.
    """
    if pad_token_id is None:
        if batch_size != 1:
            raise InputError("sequence classification of a batch larger than 1 needs config.pad_token_id to find each row's end")
        return -1
    if input_ids is None:
        return -1
    non_pad = (input_ids != pad_token_id).to(torch.int32)
    return (torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32) * non_pad).argmax(-1)


class QuestionAnsweringHead:
    """Extractive QA over a task model's base model: `qa_outputs` turns the last hidden state into
    start and end logits `(batch, seq)`; the loss is `question_answering_loss`.

    Mixed into a task class that provides `run_base(**inputs)` (the base model's output with
    `return_dict=True`); the arguments are in transformers' order for GPT-2 and the encoders.
    """

    # outputs of `qa_outputs`: the decoders' reference has 2; the encoders' sizes it by num_labels
    # (2 for QA) and splits it into start/end all the same
    answer_width: ClassVar[int | None] = 2

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)  # type: ignore[call-arg]
        self.qa_outputs = Linear(config.hidden_size, self.answer_width or config.num_labels)
        self.post_init()  # type: ignore[attr-defined]

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, use_cache=None, **inputs: Any):
        # extractive QA reads one whole pass: nothing to cache, whatever `use_cache` says
        outputs = self.run_base(  # type: ignore[attr-defined]
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, use_cache=False, **inputs,
        )
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start_logits, end_logits, start_positions, end_positions)
        output = QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
        return finish(output, return_dict, self.config)  # type: ignore[attr-defined]
