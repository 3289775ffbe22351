"""TFLite export of the TF MobileBERT heads: the flatbuffer runs in the TFLite interpreter and gives
the Keras model's outputs (fp32 within 1e-4; dynamic-range int8 with the same argmax), from Python
and from `lamina export`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import lamina  # noqa: E402
from lamina.cli import main  # noqa: E402
from lamina.errors import InputError  # noqa: E402
from lamina.tf.export import export_tflite  # noqa: E402
from tests.tf.tf_helpers import batch, make_config, torch_model  # noqa: E402

# wide enough that the weight matrices pass the converter's 1024-element floor for quantisation
WIDE = dict(hidden_size=64, embedding_size=32, intra_bottleneck_size=32, intermediate_size=64)
OUTPUTS = {"ForSequenceClassification": ["logits"], "ForQuestionAnswering": ["start_logits", "end_logits"]}


def run_tflite(flatbuffer: bytes, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], set[str]]:
    """Outputs by name, and the dtypes of the model's tensors."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
        interpreter = Interpreter(model_content=flatbuffer)
    outputs = interpreter.get_signature_runner()(**{k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    return outputs, {detail["dtype"].__name__ for detail in interpreter.get_tensor_details()}


@pytest.fixture(scope="module", params=sorted(OUTPUTS))
def keras_model(request, tmp_path_factory):
    suffix = request.param
    path = tmp_path_factory.mktemp(suffix)
    # std 0.1 keeps the logits of order 1 (0.3 makes them ~1e5 in this wider no-norm stack)
    torch_model(suffix, make_config(suffix, **WIDE), std=0.1).save_pretrained(path)
    return suffix, path, getattr(lamina, "TFMobileBert" + suffix).from_pretrained(path)


def test_float32_matches_keras(keras_model) -> None:
    suffix, _, model = keras_model
    inputs = batch(suffix, with_labels=False)
    outputs, dtypes = run_tflite(export_tflite(model, sequence_length=7, batch_size=2), inputs)
    expected = model(**inputs)
    assert sorted(outputs) == sorted(OUTPUTS[suffix]) and "int8" not in dtypes
    for name in OUTPUTS[suffix]:
        np.testing.assert_allclose(outputs[name], expected[name].numpy(), atol=1e-4, rtol=0, err_msg=name)


def test_dynamic_int8_keeps_the_argmax(keras_model) -> None:
    suffix, _, model = keras_model
    inputs = batch(suffix, with_labels=False)
    full = export_tflite(model, sequence_length=7, batch_size=2)
    quantized = export_tflite(model, sequence_length=7, batch_size=2, quantize="dynamic_int8")
    outputs, dtypes = run_tflite(quantized, inputs)
    assert "int8" in dtypes and len(quantized) < 0.6 * len(full)
    expected = model(**inputs)
    for name in OUTPUTS[suffix]:
        np.testing.assert_array_equal(outputs[name].argmax(-1), expected[name].numpy().argmax(-1), err_msg=name)


def test_command_line(keras_model, tmp_path: Path, capsys) -> None:
    suffix, path, model = keras_model
    task = {"ForSequenceClassification": "sequence_classification", "ForQuestionAnswering": "question_answering"}[suffix]
    out = tmp_path / "model.tflite"
    status = main(["export", str(path), "--format", "tflite", "--task", task, "--sequence-length", "7",
                   "--batch-size", "2", "-o", str(out)])
    assert status == 0 and f"wrote {out}" in capsys.readouterr().out
    inputs = batch(suffix, with_labels=False)
    outputs, _ = run_tflite(out.read_bytes(), inputs)
    for name in OUTPUTS[suffix]:
        np.testing.assert_allclose(outputs[name], model(**inputs)[name].numpy(), atol=1e-4, rtol=0, err_msg=name)


def test_bad_options_are_named(tmp_path: Path, capsys) -> None:
    model = lamina.TFMobileBertForSequenceClassification(make_config("ForSequenceClassification"))
    with pytest.raises(InputError, match=r"sequence_length: expected 1 to max_position_embeddings \(16\), found 17"):
        export_tflite(model, sequence_length=17)
    with pytest.raises(InputError, match="quantize"):
        export_tflite(model, quantize="int4")
    model.save_pretrained(tmp_path)
    assert main(["export", str(tmp_path), "--task", "summarization"]) == 1
    assert "task: expected one of" in capsys.readouterr().err
