"""Shared by the TensorFlow MobileBERT tests: tiny configs, inputs with padding and token types,
labels per head, PyTorch twins with every weight moved off its init, output comparison."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import lamina
from lamina.models.mobilebert import MobileBertConfig

VOCAB = 40
TINY = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12,
            embedding_size=8, intra_bottleneck_size=8, max_position_embeddings=16, type_vocab_size=3,
            num_feedforward_networks=2, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
HEADS = ["Model", "ForPreTraining", "ForMaskedLM", "ForNextSentencePrediction", "ForSequenceClassification",
         "ForMultipleChoice", "ForTokenClassification", "ForQuestionAnswering"]
VARIANTS = {
    "default": {},
    "layer_norm": dict(normalization_type="layer_norm"),
    "no_trigram": dict(trigram_input=False),
    "no_bottleneck": dict(use_bottleneck=False, intra_bottleneck_size=16),
    "bottleneck_attention": dict(use_bottleneck_attention=True),
    "unshared_key_query": dict(key_query_shared_bottleneck=False, intra_bottleneck_size=16),
    "one_ffn_untied_gelu": dict(num_feedforward_networks=1, tie_word_embeddings=False, hidden_act="gelu"),
    "plain_embeddings": dict(trigram_input=False, embedding_size=16, classifier_activation=False),
}


def make_config(suffix: str, **switches: Any) -> MobileBertConfig:
    if suffix == "ForQuestionAnswering":
        switches = {**switches, "num_labels": 2}
    return MobileBertConfig(**{**TINY, **switches})


def batch(suffix: str, with_labels: bool = True) -> dict[str, np.ndarray]:
    """Two rows of 7 tokens, the second right-padded with the pad id after 5, with token types
    (and three choices per row for multiple choice) and the head's labels."""
    rng = np.random.default_rng(3)
    ids = rng.integers(1, VOCAB, (2, 7)).astype(np.int32)
    mask = np.ones((2, 7), np.int32)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=rng.integers(0, 3, (2, 7)).astype(np.int32))
    if suffix == "ForMultipleChoice":
        inputs = {k: np.repeat(v[:, None], 3, axis=1) for k, v in inputs.items()}
        inputs["input_ids"][:, 1:, 2] = 7
    if with_labels:
        inputs.update(labels_for(suffix, ids))
    return inputs


def labels_for(suffix: str, ids: np.ndarray) -> dict[str, np.ndarray]:
    if suffix == "ForMaskedLM":
        labels = ids.copy()
        labels[:, :2] = -100
        return dict(labels=labels)
    if suffix == "ForPreTraining":
        return dict(labels=ids[:, ::-1].copy(), next_sentence_label=np.array([0, 1], np.int32))
    if suffix in ("ForNextSentencePrediction", "ForMultipleChoice"):
        return dict(labels=np.array([1, 0], np.int32))
    if suffix == "ForSequenceClassification":
        return dict(labels=np.array([2, 0], np.int32))
    if suffix == "ForTokenClassification":
        return dict(labels=ids % 3)
    if suffix == "ForQuestionAnswering":
        return dict(start_positions=np.array([1, 9], np.int32), end_positions=np.array([3, 4], np.int32))
    return {}


def torch_model(suffix: str, config: MobileBertConfig, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """lamina's PyTorch class with every weight drawn anew (norm scales around 1), so a weight in
    the wrong place shows."""
    torch.manual_seed(seed)
    model = getattr(lamina, "MobileBert" + suffix)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, std)
            if "LayerNorm.weight" in name:
                param.add_(1.0)
    return model


def torch_outputs(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> Any:
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v).long() for k, v in inputs.items()},
                     output_hidden_states=True, output_attentions=True)


def assert_close(expected: Any, found: Any, atol: float = 1e-4, where: str = "") -> None:
    """Every field of two outputs (tuples field by field), within `atol`; losses within 1e-5."""
    assert list(expected.keys()) == list(found.keys()), (where, expected.keys(), found.keys())
    for key in expected.keys():
        want, got = expected[key], found[key]
        pairs = zip(want, got) if isinstance(want, tuple) else [(want, got)]
        assert not isinstance(want, tuple) or len(want) == len(got), (where, key)
        for a, b in pairs:
            a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            b = np.asarray(b)
            assert a.shape == b.shape, (where, key, a.shape, b.shape)
            np.testing.assert_allclose(b, a, atol=1e-5 if key == "loss" else atol, rtol=0, err_msg=f"{where} {key}")
