"""TensorFlow twins of lamina's MobileBERT classes (`lamina.models.mobilebert`).

Same config (`MobileBertConfig`), same maths, same output fields (as TF tensors) and losses as the
PyTorch classes, with weights named so that one set of names serves both frameworks (see
`lamina.tf.layers`). Where the PyTorch classes deliberately differ from transformers, the twins
follow the PyTorch classes: a padding token is no one's trigram neighbour, the embedding and output
LayerNorms use the torch default eps, and losses are reduced means like PyTorch's (transformers'
TF classes returned some per example).

Module names in transformers' TF layout that differ from PyTorch: `layer_._0` for `layer.0`, and
the MLM and NSP heads as top-level `predictions___cls` / `seq_relationship___cls`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import InputError
from ..models import mobilebert as torch_mobilebert
from ..models.mobilebert import TORCH_DEFAULT_EPS, MobileBertConfig
from ..outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    MobileBertForPreTrainingOutput,
    MultipleChoiceModelOutput,
    NextSentencePredictorOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
    finish,
)
from .layers import (
    Block,
    Embedding,
    LayerNorm,
    Linear,
    activation,
    cross_entropy,
    dropout,
    make_norm,
    normal,
    question_answering_loss,
    sequence_classification_loss,
)
from .modeling import TFPreTrainedModel
from .runtime import tf

__all__ = [
    "MobileBertConfig",
    "TFMobileBertModel",
    "TFMobileBertForPreTraining",
    "TFMobileBertForMaskedLM",
    "TFMobileBertForNextSentencePrediction",
    "TFMobileBertForSequenceClassification",
    "TFMobileBertForMultipleChoice",
    "TFMobileBertForTokenClassification",
    "TFMobileBertForQuestionAnswering",
]


def _norm(config: MobileBertConfig, size: int, eps: float | None = None) -> Block:
    return make_norm(config.normalization_type, size, config.layer_norm_eps if eps is None else eps)


def _linear(config: MobileBertConfig, in_features: int, out_features: int, bias: bool = True) -> Linear:
    return Linear(in_features, out_features, config.initializer_range, bias)


class Embeddings(Block):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        std = config.initializer_range
        self.trigram_input = config.trigram_input
        self.project = config.trigram_input or config.embedding_size != config.hidden_size
        self.dropout_rate = config.hidden_dropout_prob
        self.word_embeddings = self.child("word_embeddings", Embedding(
            config.vocab_size, config.embedding_size, std, tf_name="weight", padding_idx=config.pad_token_id))
        self.position_embeddings = self.child(
            "position_embeddings", Embedding(config.max_position_embeddings, config.hidden_size, std))
        self.token_type_embeddings = self.child(
            "token_type_embeddings", Embedding(config.type_vocab_size, config.hidden_size, std))
        width = config.embedding_size * (3 if config.trigram_input else 1)
        self.embedding_transformation = self.child("embedding_transformation", _linear(config, width, config.hidden_size))
        self.norm = self.child("LayerNorm", _norm(config, config.hidden_size, TORCH_DEFAULT_EPS))

    def call(self, input_ids, token_type_ids, position_ids, inputs_embeds, attention_mask, training=False):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if self.trigram_input:
            # a padding token is no one's neighbour, like the sequence's ends (as in the PyTorch class)
            neighbours = inputs_embeds
            if attention_mask is not None:
                neighbours = inputs_embeds * tf.cast(attention_mask, inputs_embeds.dtype)[..., None]
            following = tf.pad(neighbours[:, 1:], [[0, 0], [0, 1], [0, 0]])
            preceding = tf.pad(neighbours[:, :-1], [[0, 0], [1, 0], [0, 0]])
            inputs_embeds = tf.concat([following, inputs_embeds, preceding], axis=2)
        if self.project:
            inputs_embeds = self.embedding_transformation(inputs_embeds)
        embeddings = inputs_embeds + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return dropout(self.norm(embeddings), self.dropout_rate, training)


class NormedResidual(Block):
    """`norm(dropout(dense(x)) + residual)`."""

    def __init__(self, config: MobileBertConfig, in_features: int, out_features: int, eps: float | None = None,
                 use_dropout: bool = True) -> None:
        super().__init__()
        self.dense = self.child("dense", _linear(config, in_features, out_features))
        self.norm = self.child("LayerNorm", _norm(config, out_features, eps))
        self.dropout_rate = config.hidden_dropout_prob if use_dropout else 0.0

    def call(self, x, residual, training=False):
        return self.norm(dropout(self.dense(x), self.dropout_rate, training) + residual)


class SelfAttention(Block):
    """Queries, keys and values projected from inputs of possibly different widths."""

    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        width = config.true_hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = width // config.num_attention_heads
        value_width = width if config.use_bottleneck_attention else config.hidden_size
        self.query = self.child("query", _linear(config, width, width))
        self.key = self.child("key", _linear(config, width, width))
        self.value = self.child("value", _linear(config, value_width, width))
        self.dropout_rate = config.attention_probs_dropout_prob

    def _heads(self, x):
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        return tf.transpose(tf.reshape(x, [batch, seq, self.num_heads, self.head_dim]), [0, 2, 1, 3])

    def call(self, query_input, key_input, value_input, attention_bias, training=False):
        """Returns the output `(batch, seq, width)` and the probabilities `(batch, heads, seq, seq)`."""
        query = self._heads(self.query(query_input))
        key = self._heads(self.key(key_input))
        value = self._heads(self.value(value_input))
        scores = tf.matmul(query, key, transpose_b=True) * (self.head_dim**-0.5)
        if attention_bias is not None:
            scores = scores + attention_bias
        probs = tf.nn.softmax(scores, axis=-1)
        out = tf.matmul(dropout(probs, self.dropout_rate, training), value)
        batch, seq = tf.shape(out)[0], tf.shape(out)[2]
        return tf.reshape(tf.transpose(out, [0, 2, 1, 3]), [batch, seq, self.num_heads * self.head_dim]), probs


class Attention(Block):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.attention = self.child("self", SelfAttention(config))
        width = config.true_hidden_size
        self.attention_output = self.child("output", NormedResidual(config, width, width, use_dropout=not config.use_bottleneck))


class Intermediate(Block):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.dense = self.child("dense", _linear(config, config.true_hidden_size, config.intermediate_size))
        self.act = activation(config.hidden_act)

    def call(self, x):
        return self.act(self.dense(x))


class FFNLayer(Block):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.intermediate = self.child("intermediate", Intermediate(config))
        self.ffn_output = self.child(
            "output", NormedResidual(config, config.intermediate_size, config.true_hidden_size, use_dropout=False))

    def call(self, x, training=False):
        return self.ffn_output(self.intermediate(x), x, training=training)


class Output(Block):
    """The last feed-forward output; with bottlenecks, widened back and added to the layer input."""

    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.dense = self.child("dense", _linear(config, config.intermediate_size, config.true_hidden_size))
        self.norm = self.child("LayerNorm", _norm(config, config.true_hidden_size, TORCH_DEFAULT_EPS))
        self.dropout_rate = 0.0 if config.use_bottleneck else config.hidden_dropout_prob
        self.bottleneck = None
        if config.use_bottleneck:
            self.bottleneck = self.child("bottleneck", NormedResidual(config, config.true_hidden_size, config.hidden_size))

    def call(self, intermediate, attention_output, layer_input, training=False):
        out = self.norm(dropout(self.dense(intermediate), self.dropout_rate, training) + attention_output)
        return out if self.bottleneck is None else self.bottleneck(out, layer_input, training=training)


class BottleneckLayer(Block):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.dense = self.child("dense", _linear(config, config.hidden_size, config.intra_bottleneck_size))
        self.norm = self.child("LayerNorm", _norm(config, config.intra_bottleneck_size))

    def call(self, x):
        return self.norm(self.dense(x))


class Bottleneck(Block):
    """Narrows the layer input: (query input, key input, value input, residual input)."""

    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.use_bottleneck_attention = config.use_bottleneck_attention
        self.narrow = self.child("input", BottleneckLayer(config))
        self.shared = self.child("attention", BottleneckLayer(config)) if config.key_query_shared_bottleneck else None

    def call(self, x):
        narrow = self.narrow(x)
        if self.use_bottleneck_attention:
            return narrow, narrow, narrow, narrow
        if self.shared is not None:
            shared = self.shared(x)
            return shared, shared, x, narrow
        return x, x, x, narrow


class EncoderLayer(Block):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.bottleneck = self.child("bottleneck", Bottleneck(config)) if config.use_bottleneck else None
        self.attention = self.child("attention", Attention(config))
        self.ffn = [self.child(f"ffn.{i}", FFNLayer(config)) for i in range(config.num_feedforward_networks - 1)]
        self.intermediate = self.child("intermediate", Intermediate(config))
        self.layer_output = self.child("output", Output(config))

    def call(self, hidden, attention_bias, training=False):
        if self.bottleneck is not None:
            query, key, value, residual = self.bottleneck(hidden)
        else:
            query = key = value = residual = hidden
        attended, probs = self.attention.attention(query, key, value, attention_bias, training=training)
        out = self.attention.attention_output(attended, residual, training=training)
        for ffn in self.ffn:
            out = ffn(out, training=training)
        return self.layer_output(self.intermediate(out), out, hidden, training=training), probs


class Encoder(Block):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.layers = [self.child(f"layer.{i}", EncoderLayer(config), f"layer_._{i}") for i in range(config.num_hidden_layers)]


class Pooler(Block):
    def __init__(self, config: MobileBertConfig) -> None:
        super().__init__()
        self.dense = self.child("dense", _linear(config, config.hidden_size, config.hidden_size)) \
            if config.classifier_activation else None

    def call(self, hidden):
        first = hidden[:, 0]
        return first if self.dense is None else tf.tanh(self.dense(first))


class MainLayer(Block):
    """The bare encoder: `input_ids (batch, seq)` → `(batch, seq, hidden)` and the pooled first token."""

    def __init__(self, config: MobileBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(name="mobilebert")
        self.config = config
        self.embeddings = self.child("embeddings", Embeddings(config))
        self.encoder = self.child("encoder", Encoder(config))
        self.pooler = self.child("pooler", Pooler(config)) if add_pooling_layer else None

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
             output_attentions=False, output_hidden_states=False, training=False):
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            input_ids = tf.convert_to_tensor(input_ids)
            check_token_ids(input_ids, self.config.vocab_size)
        shape = tf.shape(input_ids) if input_ids is not None else tf.shape(inputs_embeds)[:2]
        if position_ids is None:
            position_ids = tf.range(shape[1])[None]
        if token_type_ids is None:
            token_type_ids = tf.zeros(shape, tf.int32)
        hidden = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, attention_mask, training=training)
        bias = None
        if attention_mask is not None:
            # additive, (batch, 1, 1, keys): 0 for real keys, the most negative float for padding
            keep = tf.cast(attention_mask, hidden.dtype)[:, None, None, :]
            bias = (1.0 - keep) * hidden.dtype.min
        all_hidden, all_attentions = [], []
        for layer in self.encoder.layers:
            all_hidden.append(hidden)
            hidden, probs = layer(hidden, bias, training=training)
            all_attentions.append(probs)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=self.pooler(hidden) if self.pooler is not None else None,
            hidden_states=(*all_hidden, hidden) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )


def check_token_ids(input_ids: tf.Tensor, vocab_size: int) -> None:
    """Ids outside the vocabulary get a clear error (eagerly; a traced graph is left to gather)."""
    if not tf.executing_eagerly() or tf.size(input_ids) == 0:
        return
    low, high = int(tf.reduce_min(input_ids)), int(tf.reduce_max(input_ids))
    if low < 0 or high >= vocab_size:
        raise InputError(f"input_ids: token id {high if high >= vocab_size else low} is outside the vocabulary [0, {vocab_size})")


class MaskedLMPredictions(Block):
    """`(batch, seq, hidden)` → vocabulary logits; the decoder `(vocab, embedding_size)` and its bias
    are the word embeddings and `bias` when the config ties them, and `dense.weight`
    `(hidden − embedding, vocab)` supplies the remaining rows of the projection."""

    def __init__(self, config: MobileBertConfig, word_embeddings: Embedding) -> None:
        super().__init__()
        std = config.initializer_range
        self.transform_dense = self.child("transform.dense", _linear(config, config.hidden_size, config.hidden_size),
                                          "transform/dense")
        self.act = activation(config.hidden_act)
        self.transform_norm = self.child("transform.LayerNorm", LayerNorm(config.hidden_size, config.layer_norm_eps),
                                         "transform/LayerNorm")
        self.bias = self.param("bias", (config.vocab_size,), "zeros")
        self.dense = self.param("dense.weight", (config.hidden_size - config.embedding_size, config.vocab_size),
                                normal(std), "dense/weight")
        if config.tie_word_embeddings:
            self.decoder = self.share("decoder.weight", word_embeddings.weight, "decoder/weight")
            self.decoder_bias = self.share("decoder.bias", self.bias, "bias")
        else:
            self.decoder = self.param("decoder.weight", (config.vocab_size, config.embedding_size), normal(std),
                                      "decoder/weight")
            # transformers' TF head has one bias: the one the logits use is written there
            self.decoder_bias = self.param("decoder.bias", (config.vocab_size,), "zeros", "bias")

    def call(self, hidden):
        hidden = self.transform_norm(self.act(self.transform_dense(hidden)))
        projection = tf.concat([tf.transpose(self.decoder), self.dense], axis=0)
        batch, seq = tf.shape(hidden)[0], tf.shape(hidden)[1]
        logits = tf.matmul(tf.reshape(hidden, [batch * seq, -1]), projection) + self.decoder_bias
        return tf.reshape(logits, [batch, seq, -1])


class TFMobileBertPreTrainedModel(TFPreTrainedModel):
    """Base of the TF MobileBERT classes: `call` encodes, then `head` makes the task's output.

    `call(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
    output_attentions, output_hidden_states, return_dict, training, **labels)` takes the head's
    labels under the PyTorch class's names (`label_names`).
    """

    config_class = MobileBertConfig
    base_model_prefix = "mobilebert"
    with_pooler: ClassVar[bool] = True
    label_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: MobileBertConfig, add_pooling_layer: bool | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        pooler = self.with_pooler if add_pooling_layer is None else add_pooling_layer
        # transformers' TF files keep the base under `mobilebert` even for the bare model
        self.mobilebert = self.child("mobilebert" if self.torch_class.base_model_class else "",
                                     MainLayer(config, add_pooling_layer=pooler), "mobilebert")
        self.classifier_dropout = (config.hidden_dropout_prob if config.classifier_dropout is None
                                   else config.classifier_dropout)

    def call(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
             output_attentions=None, output_hidden_states=None, return_dict=None, training=False, **labels):
        unknown = sorted(set(labels) - set(self.label_names))
        if unknown:
            raise InputError(f"{type(self).__name__}: unexpected argument {unknown[0]!r} "
                             f"(its labels are {', '.join(self.label_names) or 'none'})")
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      position_ids=position_ids, inputs_embeds=inputs_embeds)
        outputs = self.mobilebert(
            **self.prepare(inputs),
            output_attentions=self.flag(output_attentions, "output_attentions"),
            output_hidden_states=self.flag(output_hidden_states, "output_hidden_states"),
            training=training,
        )
        output = self.head(outputs, inputs, training, **{k: v for k, v in labels.items() if v is not None})
        return finish(output, return_dict, self.config)

    def prepare(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The encoder's inputs from the caller's."""
        return inputs

    def head(self, outputs: BaseModelOutputWithPooling, inputs: dict[str, Any], training: bool, **labels: Any):
        """The task's output dataclass from the encoder's."""
        return outputs

    def _add_mlm_head(self) -> MaskedLMPredictions:
        return self.child("cls.predictions", MaskedLMPredictions(self.config, self.mobilebert.embeddings.word_embeddings),
                          "predictions___cls/predictions")

    def _add_nsp_head(self) -> Linear:
        return self.child("cls.seq_relationship", _linear(self.config, self.config.hidden_size, 2),
                          "seq_relationship___cls/seq_relationship")

    def _add_classifier(self, name: str, out_features: int) -> Linear:
        return self.child(name, _linear(self.config, self.config.hidden_size, out_features))


class TFMobileBertModel(TFMobileBertPreTrainedModel):
    """`input_ids (batch, seq)` → `last_hidden_state (batch, seq, hidden)`, `pooler_output (batch, hidden)`."""

    torch_class = torch_mobilebert.MobileBertModel


class TFMobileBertForPreTraining(TFMobileBertPreTrainedModel):
    """MLM logits `(batch, seq, vocab)` and next-sentence logits `(batch, 2)`; the loss is their sum,
    computed when both `labels` and `next_sentence_label` are given."""

    torch_class = torch_mobilebert.MobileBertForPreTraining
    label_names = ("labels", "next_sentence_label")

    def __init__(self, config: MobileBertConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.predictions = self._add_mlm_head()
        self.seq_relationship = self._add_nsp_head()

    def head(self, outputs, inputs, training, labels=None, next_sentence_label=None):
        prediction_logits = self.predictions(outputs.last_hidden_state)
        seq_relationship_logits = self.seq_relationship(outputs.pooler_output)
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = cross_entropy(prediction_logits, labels) + cross_entropy(seq_relationship_logits, next_sentence_label)
        return MobileBertForPreTrainingOutput(
            loss=loss, prediction_logits=prediction_logits, seq_relationship_logits=seq_relationship_logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )


class TFMobileBertForMaskedLM(TFMobileBertPreTrainedModel):
    """MLM logits `(batch, seq, vocab)`; loss over the labels that are not -100."""

    torch_class = torch_mobilebert.MobileBertForMaskedLM
    with_pooler = False
    label_names = ("labels",)

    def __init__(self, config: MobileBertConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.predictions = self._add_mlm_head()

    def head(self, outputs, inputs, training, labels=None):
        logits = self.predictions(outputs.last_hidden_state)
        loss = cross_entropy(logits, labels) if labels is not None else None
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                              attentions=outputs.attentions)


class TFMobileBertForNextSentencePrediction(TFMobileBertPreTrainedModel):
    """Is-next logits `(batch, 2)` from the pooled first token (0: B continues A). The labels are
    `labels` (the PyTorch class's name) or `next_sentence_label` (transformers' TF name)."""

    torch_class = torch_mobilebert.MobileBertForNextSentencePrediction
    label_names = ("labels", "next_sentence_label")

    def __init__(self, config: MobileBertConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.seq_relationship = self._add_nsp_head()

    def head(self, outputs, inputs, training, labels=None, next_sentence_label=None):
        labels = next_sentence_label if labels is None else labels
        logits = self.seq_relationship(outputs.pooler_output)
        loss = cross_entropy(logits, labels) if labels is not None else None
        return NextSentencePredictorOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                           attentions=outputs.attentions)


class TFMobileBertForSequenceClassification(TFMobileBertPreTrainedModel):
    """Logits `(batch, num_labels)` from the pooled first token; loss by `problem_type`."""

    torch_class = torch_mobilebert.MobileBertForSequenceClassification
    label_names = ("labels",)

    def __init__(self, config: MobileBertConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.classifier = self._add_classifier("classifier", config.num_labels)

    def head(self, outputs, inputs, training, labels=None):
        logits = self.classifier(dropout(outputs.pooler_output, self.classifier_dropout, training))
        loss = sequence_classification_loss(logits, labels, self.config) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)


class TFMobileBertForMultipleChoice(TFMobileBertPreTrainedModel):
    """Inputs `(batch, choices, seq)` → one score per choice, logits `(batch, choices)`."""

    torch_class = torch_mobilebert.MobileBertForMultipleChoice
    label_names = ("labels",)

    def __init__(self, config: MobileBertConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.classifier = self._add_classifier("classifier", 1)

    def prepare(self, inputs):
        reference = inputs["input_ids"] if inputs["input_ids"] is not None else inputs["inputs_embeds"]
        rank = None if reference is None else len(reference.shape)
        if rank is None or rank < 3 or (inputs["input_ids"] is None and rank != 4):
            found = None if reference is None else tuple(reference.shape)
            raise InputError(f"multiple choice: expected inputs of shape (batch, choices, seq[, hidden]), found {found}")

        def flat(t):
            if t is None:
                return None
            t = tf.convert_to_tensor(t)
            return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], axis=0))

        return {name: flat(value) for name, value in inputs.items()}

    def head(self, outputs, inputs, training, labels=None):
        reference = inputs["input_ids"] if inputs["input_ids"] is not None else inputs["inputs_embeds"]
        logits = self.classifier(dropout(outputs.pooler_output, self.classifier_dropout, training))
        logits = tf.reshape(logits, [-1, tf.shape(reference)[1]])
        loss = cross_entropy(logits, labels) if labels is not None else None
        return MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                         attentions=outputs.attentions)


class TFMobileBertForTokenClassification(TFMobileBertPreTrainedModel):
    """Logits `(batch, seq, num_labels)`."""

    torch_class = torch_mobilebert.MobileBertForTokenClassification
    with_pooler = False
    label_names = ("labels",)

    def __init__(self, config: MobileBertConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.classifier = self._add_classifier("classifier", config.num_labels)

    def head(self, outputs, inputs, training, labels=None):
        logits = self.classifier(dropout(outputs.last_hidden_state, self.classifier_dropout, training))
        loss = cross_entropy(logits, labels) if labels is not None else None
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                     attentions=outputs.attentions)


class TFMobileBertForQuestionAnswering(TFMobileBertPreTrainedModel):
    """Start and end logits `(batch, seq)` for extractive QA."""

    torch_class = torch_mobilebert.MobileBertForQuestionAnswering
    with_pooler = False
    label_names = ("start_positions", "end_positions")

    def __init__(self, config: MobileBertConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        # sized by num_labels (2 for QA) and split into start/end, like the PyTorch class
        self.qa_outputs = self._add_classifier("qa_outputs", config.num_labels)

    def head(self, outputs, inputs, training, start_positions=None, end_positions=None):
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = (tf.squeeze(t, -1) for t in tf.split(logits, 2, axis=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = question_answering_loss(start_logits, end_logits, start_positions, end_positions)
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                            hidden_states=outputs.hidden_states, attentions=outputs.attentions)
