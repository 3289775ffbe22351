"""What the BERT-style encoders (MegatronBERT, MobileBERT) share: the layer loop of the base model
and every task head.

A family provides its base model (a subclass of `EncoderModel` built with `add_pooling_layer`)
and declares its task classes as `class XForMaskedLM(EncoderForMaskedLM, base=XModel)`, which
takes the config class and `base_model_prefix` ("bert", "mobilebert") from `XModel`. Heads are
named as in the reference checkpoints (`cls.predictions`, `cls.seq_relationship`, `classifier`,
`qa_outputs`), so no name map is needed for them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PretrainedConfig
from ..errors import InputError
from ..layers.encoder import EncoderHeads, MaskedLMPredictions
from ..layers.heads import (
    QuestionAnsweringHead,
    masked_lm_loss,
    sequence_classification_loss,
    token_classification_loss,
)
from ..modeling import PreTrainedModel
from ..outputs import (
    BertForPreTrainingOutput,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    NextSentencePredictorOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
    finish,
)




class EncoderPreTrainedModel(PreTrainedModel):
    """What every encoder model shares: the initialisation of the MLM bias and the buffers that
    old checkpoints stored."""

    ignore_on_load = (r"embeddings\.position_ids$",)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MaskedLMPredictions):
            nn.init.zeros_(module.bias)


class EncoderModel(EncoderPreTrainedModel):
    """Base of the encoders' bare models, which hold `embeddings` (with `word_embeddings`)."""

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    @classmethod
    def masked_lm_predictions(cls, config: PretrainedConfig) -> MaskedLMPredictions:
        """The family's `cls.predictions` module."""
        raise NotImplementedError

    @classmethod
    def classifier_dropout(cls, config: PretrainedConfig) -> float:
        return config.hidden_dropout_prob


class EncoderTask(EncoderPreTrainedModel):
    """A head over an `EncoderModel` stored under `base_model_prefix`."""

    with_pooler: ClassVar[bool] = True

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.base_model_class(config, add_pooling_layer=self.with_pooler))

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def run_base(self, **inputs: Any):
        """The base model's output (a dataclass) for `inputs`."""
        return self.base_model(**inputs, return_dict=True)

    def encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
               output_attentions, output_hidden_states, **extra: Any):
        return self.run_base(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, **extra,
        )


class _LanguageModelTask(EncoderTask):
    """A task whose `cls.predictions.decoder` is tied to the word embeddings."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.tied_weights = {
            "cls.predictions.decoder.weight": f"{cls.base_model_prefix}.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias",
        }

    def get_output_embeddings(self) -> nn.Module:
        return self.cls.predictions.decoder

    def _map_checkpoint(self, tensors, info, expected, dtype, on_tensor=None, placement=None):
        state = super()._map_checkpoint(tensors, info, expected, dtype, on_tensor, placement)
        # transformers 4.x made the decoder's bias the very tensor `cls.predictions.bias`, so its
        # files hold that one only; untied, lamina (like transformers 5) keeps both
        decoder_bias, bias = "cls.predictions.decoder.bias", "cls.predictions.bias"
        if decoder_bias not in state and bias in state:
            state[decoder_bias] = state[bias]
        return state


class EncoderForMaskedLM(_LanguageModelTask):
    """MLM logits `(batch, seq, vocab)`; loss over the labels that are not -100."""

    with_pooler = False

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.cls = EncoderHeads(self.base_model_class.masked_lm_predictions(config), None)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **_: Any):
        outputs = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                              output_attentions, output_hidden_states)
        logits = self.cls.predictions(outputs.last_hidden_state)
        loss = masked_lm_loss(logits, labels) if labels is not None else None
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return finish(output, return_dict, self.config)


class EncoderForPreTraining(_LanguageModelTask):
    """MLM logits `(batch, seq, vocab)` and next-sentence logits `(batch, 2)`; the loss is their sum,
    computed when both `labels` and `next_sentence_label` are given."""

    output_class: ClassVar[type[BertForPreTrainingOutput]] = BertForPreTrainingOutput

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.cls = EncoderHeads(self.base_model_class.masked_lm_predictions(config), config.hidden_size)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, next_sentence_label=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **_: Any):
        outputs = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                              output_attentions, output_hidden_states)
        prediction_logits = self.cls.predictions(outputs.last_hidden_state)
        seq_relationship_logits = self.cls.seq_relationship(outputs.pooler_output)
        loss = None
        if labels is not None and next_sentence_label is not None:
            nsp_loss = F.cross_entropy(seq_relationship_logits.float().view(-1, 2), next_sentence_label.view(-1))
            loss = masked_lm_loss(prediction_logits, labels) + nsp_loss
        output = self.output_class(
            loss=loss, prediction_logits=prediction_logits, seq_relationship_logits=seq_relationship_logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
        return finish(output, return_dict, self.config)


class EncoderForNextSentencePrediction(EncoderTask):
    """Is-next logits `(batch, 2)` from the pooled first token (0: B continues A)."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.cls = EncoderHeads(None, config.hidden_size)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **_: Any):
        outputs = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                              output_attentions, output_hidden_states)
        logits = self.cls.seq_relationship(outputs.pooler_output)
        loss = F.cross_entropy(logits.float().view(-1, 2), labels.view(-1)) if labels is not None else None
        output = NextSentencePredictorOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return finish(output, return_dict, self.config)


class _ClassifierTask(EncoderTask):
    """A task with `dropout` + `classifier` (to `num_labels` outputs, or one score per choice)."""

    one_score: ClassVar[bool] = False

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.dropout = nn.Dropout(self.base_model_class.classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, 1 if self.one_score else config.num_labels)
        self.post_init()


class EncoderForSequenceClassification(_ClassifierTask):
    """Logits `(batch, num_labels)` from the pooled first token; loss by `problem_type`."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **_: Any):
        outputs = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                              output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = sequence_classification_loss(logits, labels, self.config) if labels is not None else None
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return finish(output, return_dict, self.config)


class EncoderForMultipleChoice(_ClassifierTask):
    """Inputs `(batch, choices, seq)` → one score per choice, logits `(batch, choices)`."""

    one_score = True

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **_: Any):
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is None or reference.dim() < 3 or (input_ids is None and reference.dim() != 4):
            found = None if reference is None else tuple(reference.shape)
            raise InputError(f"multiple choice: expected inputs of shape (batch, choices, seq[, hidden]), found {found}")
        num_choices = reference.shape[1]

        def flat(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.reshape(-1, *t.shape[2:])

        outputs = self.encode(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                              flat(inputs_embeds), output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)
        loss = F.cross_entropy(logits.float(), labels.to(logits.device)) if labels is not None else None
        output = MultipleChoiceModelOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return finish(output, return_dict, self.config)


class EncoderForTokenClassification(_ClassifierTask):
    """Logits `(batch, seq, num_labels)`."""

    with_pooler = False

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **_: Any):
        outputs = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                              output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = token_classification_loss(logits, labels) if labels is not None else None
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return finish(output, return_dict, self.config)


class EncoderForQuestionAnswering(QuestionAnsweringHead, EncoderTask):
    """Start and end logits `(batch, seq)` for extractive QA (the one QA head)."""

    with_pooler = False
    answer_width = None
