"""Weights of the TF MobileBERT twins: read from lamina's PyTorch files (safetensors, and
pytorch_model.bin with from_pt=True) and from transformers' tf_model.h5; written as files lamina's
PyTorch classes and transformers' TF classes read; heads reconciled like the PyTorch loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
h5py = pytest.importorskip("h5py")

import lamina  # noqa: E402
import lamina.modeling  # noqa: E402
from lamina.errors import CheckpointError  # noqa: E402
from lamina.tf.h5 import read_tf_h5, write_tf_h5  # noqa: E402
from tests.tf.tf_helpers import assert_close, batch, make_config, torch_model, torch_outputs  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tf_mobilebert"


def tf_outputs(model, suffix: str):
    return model(**batch(suffix), output_hidden_states=True, output_attentions=True)


@pytest.mark.parametrize("suffix", ["ForPreTraining", "ForQuestionAnswering"])
def test_reads_pytorch_safetensors_and_bin(suffix: str, tmp_path: Path) -> None:
    reference = torch_model(suffix, make_config(suffix))
    expected = torch_outputs(reference, batch(suffix))
    reference.save_pretrained(tmp_path / "safe")
    reference.save_pretrained(tmp_path / "bin", safe_serialization=False)
    tf_class = getattr(lamina, "TFMobileBert" + suffix)
    assert_close(expected, tf_outputs(tf_class.from_pretrained(tmp_path / "safe"), suffix))
    with pytest.raises(CheckpointError, match="pass from_pt=True"):
        tf_class.from_pretrained(tmp_path / "bin")
    assert_close(expected, tf_outputs(tf_class.from_pretrained(tmp_path / "bin", from_pt=True), suffix))


def test_base_checkpoint_into_task_model_and_back(tmp_path: Path) -> None:
    base = torch_model("Model", make_config("Model"))
    base.save_pretrained(tmp_path / "base")
    task, info = lamina.TFMobileBertForSequenceClassification.from_pretrained(tmp_path / "base", output_loading_info=True)
    assert sorted(info.missing_keys) == ["classifier.bias", "classifier.weight"]
    np.testing.assert_allclose(task.mobilebert(**batch("Model", with_labels=False)).pooler_output.numpy(),
                               torch_outputs(base, batch("Model", with_labels=False)).pooler_output.numpy(), atol=1e-4)
    task.save_pretrained(tmp_path / "task_h5", safe_serialization=False)
    bare, info = lamina.TFMobileBertModel.from_pretrained(tmp_path / "task_h5", output_loading_info=True)
    assert sorted(info.unexpected_keys) == ["classifier/bias", "classifier/kernel"]
    head_less, info = lamina.TFMobileBertForSequenceClassification.from_pretrained(
        FIXTURES / "default" / "Model", output_loading_info=True)
    assert sorted(info.missing_keys) == ["classifier.bias", "classifier.weight"]


@pytest.mark.parametrize("suffix, switches", [
    ("ForPreTraining", {}),
    ("ForMaskedLM", dict(tie_word_embeddings=False, normalization_type="layer_norm")),
    ("ForMultipleChoice", dict(use_bottleneck=False, intra_bottleneck_size=16)),
])
def test_save_round_trips_through_both_formats(suffix: str, switches: dict, tmp_path: Path) -> None:
    reference = torch_model(suffix, make_config(suffix, **switches))
    expected = torch_outputs(reference, batch(suffix))
    reference.save_pretrained(tmp_path / "pt")
    tf_class = getattr(lamina, "TFMobileBert" + suffix)
    model = tf_class.from_pretrained(tmp_path / "pt")
    model.save_pretrained(tmp_path / "safe")
    model.save_pretrained(tmp_path / "h5", safe_serialization=False)
    assert sorted(p.name for p in (tmp_path / "h5").iterdir()) == ["config.json", "tf_model.h5"]
    assert_close(expected, torch_outputs(getattr(lamina, "MobileBert" + suffix).from_pretrained(tmp_path / "safe"), batch(suffix)))
    assert_close(expected, tf_outputs(tf_class.from_pretrained(tmp_path / "safe"), suffix))
    assert_close(expected, tf_outputs(tf_class.from_pretrained(tmp_path / "h5"), suffix))
    # lamina's PyTorch classes read tf_model.h5 too (from_tf=True as transformers users pass it)
    torch_class = getattr(lamina, "MobileBert" + suffix)
    loaded = torch_class.from_pretrained(tmp_path / "h5", from_tf=True)
    assert "from_tf" not in loaded.config.to_dict()
    assert_close(expected, torch_outputs(loaded, batch(suffix)))


@pytest.mark.parametrize("case", ["default/ForPreTraining", "layer_norm/ForPreTraining", "default/ForQuestionAnswering"])
def test_written_h5_has_transformers_layout(case: str, tmp_path: Path) -> None:
    """Loading transformers' file and writing it again gives the same layers, weight names, shapes
    and values (the order of weights inside a layer may differ; loaders match by name)."""
    directory = FIXTURES / case
    model = getattr(lamina, "TFMobileBert" + directory.name).from_pretrained(directory)
    model.save_pretrained(tmp_path, safe_serialization=False)
    with h5py.File(directory / "tf_model.h5") as theirs, h5py.File(tmp_path / "tf_model.h5") as ours:
        assert list(theirs.attrs["layer_names"]) == list(ours.attrs["layer_names"])
        for layer in theirs.attrs["layer_names"]:
            # the model's own name is the first level (Keras numbers a second model of a class `_1`)
            assert sorted(n.split("/", 1)[1] for n in theirs[layer].attrs["weight_names"]) == sorted(
                n.split("/", 1)[1] for n in ours[layer].attrs["weight_names"])
    original, written = read_tf_h5(directory / "tf_model.h5"), read_tf_h5(tmp_path / "tf_model.h5")
    assert sorted(original) == sorted(written)
    for name in original:
        np.testing.assert_array_equal(original[name], written[name], err_msg=name)


def test_file_choice_and_flags(tmp_path: Path) -> None:
    fixture = FIXTURES / "default" / "ForSequenceClassification"
    model = lamina.TFMobileBertForSequenceClassification.from_pretrained(fixture)
    model.save_pretrained(tmp_path, safe_serialization=False)
    make_config("Model").save_pretrained(tmp_path / "config_only")
    with pytest.raises(CheckpointError, match="no weights found"):
        lamina.TFMobileBertModel.from_pretrained(tmp_path / "config_only")
    with pytest.raises(CheckpointError, match="from_tf=True, but there is no tf_model.h5"):
        torch_model("Model", make_config("Model")).save_pretrained(tmp_path / "pt")
        lamina.TFMobileBertModel.from_pretrained(tmp_path / "pt", from_tf=True)
    # a safetensors save replaces an older tf_model.h5 rather than leaving it to shadow the new weights
    changed = lamina.TFMobileBertForSequenceClassification(make_config("ForSequenceClassification"))
    changed.save_pretrained(tmp_path)
    assert not (tmp_path / "tf_model.h5").exists()
    reloaded = lamina.TFMobileBertForSequenceClassification.from_pretrained(tmp_path)
    inputs = batch("ForSequenceClassification", with_labels=False)
    np.testing.assert_allclose(reloaded(**inputs).logits.numpy(), changed(**inputs).logits.numpy(), atol=1e-6)


def test_h5_errors_and_long_attributes(tmp_path: Path) -> None:
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError, match="not a readable HDF5 file"):
        read_tf_h5(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(CheckpointError, match="attribute 'layer_names' is missing"):
        read_tf_h5(tmp_path / "empty.h5")
    # more weight names than one HDF5 attribute holds: split into weight_names0, weight_names1, …
    weights = {f"mobilebert/encoder/layer_._{i}/attention/self/query/kernel": np.full((1,), i, np.float32)
               for i in range(1500)}
    write_tf_h5(tmp_path / "long.h5", weights, "tf_mobile_bert_model", "3")
    with h5py.File(tmp_path / "long.h5") as handle:
        assert "weight_names" not in handle["mobilebert"].attrs and "weight_names1" in handle["mobilebert"].attrs
    read = read_tf_h5(tmp_path / "long.h5")
    assert list(read) == list(weights) and read["mobilebert/encoder/layer_._1499/attention/self/query/kernel"][0] == 1499


def test_mismatched_head_sizes() -> None:
    fixture = FIXTURES / "default" / "ForSequenceClassification"
    five = {i: f"LABEL_{i}" for i in range(5)}
    with pytest.raises(CheckpointError, match=r"'classifier/kernel' \(as 'classifier.weight'\) has shape \(3, 16\), expected \(5, 16\)"):
        lamina.TFMobileBertForSequenceClassification.from_pretrained(fixture, id2label=five)
    model, info = lamina.TFMobileBertForSequenceClassification.from_pretrained(
        fixture, id2label=five, ignore_mismatched_sizes=True, output_loading_info=True)
    assert [key for key, _, _ in info.mismatched_keys] == ["classifier.weight", "classifier.bias"]
    assert model(**batch("ForSequenceClassification", with_labels=False)).logits.shape == (2, 5)
