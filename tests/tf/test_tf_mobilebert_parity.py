"""lamina's TF MobileBERT classes against lamina's PyTorch classes on the same weights: every class,
both normalisation types, trigram on and off, the bottleneck variants, token types, padding,
hidden states, attentions and losses."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import lamina  # noqa: E402
from lamina.errors import CheckpointError, InputError  # noqa: E402
from tests.tf.tf_helpers import HEADS, VARIANTS, assert_close, batch, make_config, torch_model, torch_outputs  # noqa: E402


def tf_twin(suffix: str, torch_twin, switches: dict):
    model = getattr(lamina, "TFMobileBert" + suffix)(make_config(suffix, **switches))
    state = {k: v.numpy() for k, v in torch_twin.checkpoint_state_dict().items()}
    model.load_checkpoint_state(state, "test")
    return model


# every head on the default config; every variant with the pre-training heads (the base, MLM and
# NSP weights) and one other head in turn (eager Keras costs ~1 s per model on 2 cores)
CASES = [(suffix, "default") for suffix in HEADS] + [
    case
    for index, variant in enumerate(v for v in VARIANTS if v != "default")
    for case in (("ForPreTraining", variant), (HEADS[3 + index % 5], variant))
]


@pytest.mark.parametrize("suffix, variant", CASES)
def test_matches_pytorch(suffix: str, variant: str) -> None:
    switches = VARIANTS[variant]
    reference = torch_model(suffix, make_config(suffix, **switches))
    model = tf_twin(suffix, reference, switches)
    inputs = batch(suffix)
    expected = torch_outputs(reference, inputs)
    found = model(**inputs, output_hidden_states=True, output_attentions=True)
    assert_close(expected, found, where=f"{variant}/{suffix}")


def test_padding_does_not_change_real_tokens() -> None:
    reference = torch_model("Model", make_config("Model"))
    model = tf_twin("Model", reference, {})
    inputs = batch("Model", with_labels=False)
    short = {k: v[1:2, :5] for k, v in inputs.items()}
    padded = model(**{k: v[1:2] for k, v in inputs.items()}).last_hidden_state.numpy()
    alone = model(**short).last_hidden_state.numpy()
    np.testing.assert_allclose(padded[:, :5], alone, atol=1e-5, rtol=0)


def test_tuples_inputs_embeds_and_defaults() -> None:
    suffix = "ForSequenceClassification"
    reference = torch_model(suffix, make_config(suffix))
    model = tf_twin(suffix, reference, {})
    ids = batch(suffix, with_labels=False)["input_ids"]
    as_tuple = model(input_ids=ids, return_dict=False)
    embeds = tf.gather(model.mobilebert.embeddings.word_embeddings.weight, ids)
    from_embeds = model(inputs_embeds=embeds)
    np.testing.assert_allclose(as_tuple[0].numpy(), from_embeds.logits.numpy(), atol=1e-6, rtol=0)
    expected = torch_outputs(reference, {"input_ids": ids})
    np.testing.assert_allclose(as_tuple[0].numpy(), expected.logits.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("problem_type, labels", [
    ("regression", np.array([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]], np.float32)),
    ("multi_label_classification", np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], np.float32)),
])
def test_sequence_classification_problem_types(problem_type: str, labels: np.ndarray) -> None:
    suffix = "ForSequenceClassification"
    reference = torch_model(suffix, make_config(suffix, problem_type=problem_type))
    model = tf_twin(suffix, reference, dict(problem_type=problem_type))
    inputs = {**batch(suffix, with_labels=False)}
    import torch

    with torch.no_grad():
        expected = reference(**{k: torch.from_numpy(v).long() for k, v in inputs.items()}, labels=torch.from_numpy(labels))
    found = model(**inputs, labels=labels)
    np.testing.assert_allclose(found.loss.numpy(), expected.loss.numpy(), atol=1e-5, rtol=0)


def test_next_sentence_label_alias() -> None:
    suffix = "ForNextSentencePrediction"
    model = tf_twin(suffix, torch_model(suffix, make_config(suffix)), {})
    inputs = batch(suffix)
    labels = inputs.pop("labels")
    np.testing.assert_allclose(model(**inputs, next_sentence_label=labels).loss.numpy(),
                               model(**inputs, labels=labels).loss.numpy(), rtol=0, atol=0)


def test_errors_name_the_problem() -> None:
    model = lamina.TFMobileBertModel(make_config("Model"))
    with pytest.raises(InputError, match="token id 40 is outside the vocabulary"):
        model(input_ids=np.array([[1, 40]], np.int32))
    with pytest.raises(InputError, match="exactly one of input_ids and inputs_embeds"):
        model()
    with pytest.raises(InputError, match="unexpected argument 'label' .its labels are start_positions, end_positions"):
        lamina.TFMobileBertForQuestionAnswering(make_config("ForQuestionAnswering"))(input_ids=np.array([[1]]), label=1)
    with pytest.raises(InputError, match="multiple choice"):
        lamina.TFMobileBertForMultipleChoice(make_config("ForMultipleChoice"))(input_ids=np.array([[1, 2]], np.int32))
    state = {e.torch_name: e.variable.numpy() for e in model.checkpoint_entries()}
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][:5]
    with pytest.raises(CheckpointError, match=r"'embeddings.word_embeddings.weight' has shape \(5, 8\), expected \(40, 8\)"):
        model.load_checkpoint_state(state, "test")
    del state["embeddings.word_embeddings.weight"]
    with pytest.raises(CheckpointError, match="missing key 'embeddings.word_embeddings.weight'"):
        model.load_checkpoint_state(state, "test")


def test_training_applies_dropout() -> None:
    config = make_config("Model", hidden_dropout_prob=0.5)
    model = lamina.TFMobileBertModel(config)
    ids = batch("Model", with_labels=False)["input_ids"]
    eval_a, eval_b = model(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state
    train = model(input_ids=ids, training=True).last_hidden_state
    np.testing.assert_array_equal(eval_a.numpy(), eval_b.numpy())
    assert np.abs(train.numpy() - eval_a.numpy()).max() > 1e-3
