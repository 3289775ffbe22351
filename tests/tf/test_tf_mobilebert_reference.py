"""lamina's TF MobileBERT classes against transformers 4.46.3's TF classes: each recorded
tf_model.h5 (scripts/record_tf_mobilebert_fixtures.py) loads, and every recorded output (hidden
states and attentions included) matches; the losses match the reference's mean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import lamina  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tf_mobilebert"
CASES = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*") if p.is_dir())


def field(output, key: str) -> np.ndarray:
    name, *index = key.split(".")
    value = output[name]
    return np.asarray(value[int(index[0])] if index else value)


def test_every_class_is_recorded() -> None:
    assert {case.split("/")[1] for case in CASES} == {
        "Model", "ForPreTraining", "ForMaskedLM", "ForNextSentencePrediction", "ForSequenceClassification",
        "ForMultipleChoice", "ForTokenClassification", "ForQuestionAnswering"}
    assert {case.split("/")[0] for case in CASES} >= {"default", "layer_norm", "no_trigram", "no_bottleneck",
                                                      "bottleneck_attention", "unshared_key_query"}


@pytest.mark.parametrize("case", CASES)
def test_matches_transformers_tf(case: str) -> None:
    directory = FIXTURES / case
    model, info = getattr(lamina, "TFMobileBert" + directory.name).from_pretrained(directory, output_loading_info=True)
    assert not (info.missing_keys or info.unexpected_keys or info.mismatched_keys)
    reference = np.load(directory / "reference.npz")
    inputs = {k.removeprefix("in."): reference[k] for k in reference.files if k.startswith("in.")}
    output = model(**inputs, output_hidden_states=True, output_attentions=True)
    recorded = [k.removeprefix("out.") for k in reference.files if k.startswith("out.")]
    assert {k.split(".")[0] for k in recorded} == set(output.keys())
    for key in recorded:
        expected = reference["out." + key]
        if key == "loss":
            # transformers' TF classes return some losses per example; the PyTorch reduction is their mean
            expected = expected.mean()
        np.testing.assert_allclose(field(output, key), expected, atol=1e-4, rtol=0, err_msg=f"{case} {key}")
