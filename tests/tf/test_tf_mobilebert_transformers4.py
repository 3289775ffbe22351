"""Files exchanged with transformers 4.x's own TF classes, live. Runs only where transformers 4.x
and its TensorFlow requirements are installed (e.g. /work/venv4tf, see
scripts/record_tf_mobilebert_fixtures.py); elsewhere the recorded fixtures stand in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tensorflow")
transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "TFMobileBertForPreTraining"):
    pytest.skip("needs transformers 4.x with its TensorFlow classes", allow_module_level=True)

import lamina  # noqa: E402
from tests.tf.tf_helpers import batch, make_config, torch_model  # noqa: E402

FIELDS = {"ForPreTraining": ["prediction_logits", "seq_relationship_logits"], "ForSequenceClassification": ["logits"],
          "ForQuestionAnswering": ["start_logits", "end_logits"]}


@pytest.mark.parametrize("safe_serialization", [True, False])
@pytest.mark.parametrize("suffix", sorted(FIELDS))
def test_transformers_tf_loads_what_lamina_writes(suffix: str, safe_serialization: bool, tmp_path: Path) -> None:
    reference = torch_model(suffix, make_config(suffix))
    with torch.no_grad():
        # transformers' trigram input reads a padding neighbour's embedding, lamina reads zeros:
        # the same when the pad row is zero, as PyTorch initialises it
        reference.get_input_embeddings().weight[0] = 0
    reference.save_pretrained(tmp_path / "pt")
    ours = getattr(lamina, "TFMobileBert" + suffix).from_pretrained(tmp_path / "pt")
    ours.save_pretrained(tmp_path / "out", safe_serialization=safe_serialization)
    theirs = getattr(transformers, "TFMobileBert" + suffix).from_pretrained(tmp_path / "out")
    inputs = batch(suffix, with_labels=False)
    expected, found = theirs(**inputs), ours(**inputs)
    for name in FIELDS[suffix]:
        np.testing.assert_allclose(np.asarray(found[name]), np.asarray(expected[name]), atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("suffix", ["ForSequenceClassification", "ForQuestionAnswering"])
def test_lamina_loads_what_transformers_tf_writes(suffix: str, tmp_path: Path) -> None:
    config = transformers.MobileBertConfig(**make_config(suffix).to_dict())
    theirs = getattr(transformers, "TFMobileBert" + suffix)(config)
    inputs = batch(suffix, with_labels=False)
    inputs.pop("attention_mask")  # fresh TF weights leave the pad row non-zero: no padding here
    theirs(**inputs)
    theirs.save_pretrained(tmp_path)
    ours = getattr(lamina, "TFMobileBert" + suffix).from_pretrained(tmp_path)
    expected, found = theirs(**inputs), ours(**inputs)
    for name in FIELDS[suffix]:
        np.testing.assert_allclose(np.asarray(found[name]), np.asarray(expected[name]), atol=1e-4, rtol=0, err_msg=name)
