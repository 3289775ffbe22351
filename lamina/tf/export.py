"""TFLite export of the TF MobileBERT twins, for phones.

The exported model takes int32 `input_ids`, `attention_mask` and `token_type_ids` of a fixed
shape, `(batch_size, sequence_length)` (multiple choice: `(batch_size, num_choices,
sequence_length)`), and returns the head's output fields by name (`logits`, or `start_logits` and
`end_logits`, …). `quantize="dynamic_int8"` stores the weight matrices as int8 (dynamic-range
quantisation: activations stay float, about a quarter of the size).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import InputError
from . import mobilebert
from .modeling import TFPreTrainedModel
from .runtime import tf

# the task names of lamina.models.auto → TF class
TASKS = {
    "base": mobilebert.TFMobileBertModel,
    "pretraining": mobilebert.TFMobileBertForPreTraining,
    "masked_lm": mobilebert.TFMobileBertForMaskedLM,
    "next_sentence_prediction": mobilebert.TFMobileBertForNextSentencePrediction,
    "sequence_classification": mobilebert.TFMobileBertForSequenceClassification,
    "multiple_choice": mobilebert.TFMobileBertForMultipleChoice,
    "token_classification": mobilebert.TFMobileBertForTokenClassification,
    "question_answering": mobilebert.TFMobileBertForQuestionAnswering,
}
QUANTIZATIONS = (None, "dynamic_int8")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def export_tflite(
    model: TFPreTrainedModel,
    output: str | os.PathLike | None = None,
    sequence_length: int = 128,
    batch_size: int = 1,
    num_choices: int = 2,
    quantize: str | None = None,
) -> bytes:
    """Convert `model` to a TFLite flatbuffer (written to `output` when given) and return it."""
    if quantize not in QUANTIZATIONS:
        raise InputError(f"quantize: expected one of {QUANTIZATIONS}, found {quantize!r}")
    max_positions = model.config.max_position_embeddings
    if not 0 < sequence_length <= max_positions:
        raise InputError(f"sequence_length: expected 1 to max_position_embeddings ({max_positions}), found {sequence_length}")
    if batch_size < 1 or num_choices < 1:
        raise InputError(f"batch_size and num_choices: expected positive, found {batch_size} and {num_choices}")
    multiple_choice = isinstance(model, mobilebert.TFMobileBertForMultipleChoice)
    shape = [batch_size, num_choices, sequence_length] if multiple_choice else [batch_size, sequence_length]
    signature = [tf.TensorSpec(shape, tf.int32, name=name) for name in INPUT_NAMES]

    @tf.function(input_signature=signature)
    def serve(input_ids, attention_mask, token_type_ids):
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        output_attentions=False, output_hidden_states=False, return_dict=True, training=False)
        return dict(outputs.items())

    # through a SavedModel: the converter then keeps the signature, so interpreters address inputs
    # and outputs by name (from a bare concrete function it drops it). The root is a plain module
    # holding the TF variables: a Keras layer in the tree would add a serving function of its own.
    holder = tf.Module()
    holder.weights = [variable.value for variable in model.weights]
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(holder, saved, signatures={"serving_default": serve.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if quantize == "dynamic_int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_bytes(flatbuffer)
    return flatbuffer


def export_pretrained(
    pretrained_model_name_or_path: str | os.PathLike,
    output: str | os.PathLike,
    task: str = "sequence_classification",
    **options,
) -> bytes:
    """Load a MobileBERT checkpoint (any file `from_pretrained` reads) with the head of `task` and
    export it (`options` as for `export_tflite`)."""
    if task not in TASKS:
        raise InputError(f"task: expected one of {sorted(TASKS)}, found {task!r}")
    model = TASKS[task].from_pretrained(pretrained_model_name_or_path, from_pt=True)
    return export_tflite(model, output, **options)
