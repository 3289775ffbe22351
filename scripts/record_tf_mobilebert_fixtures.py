"""Record TensorFlow MobileBERT reference outputs from transformers 4.46.3 (transformers 5 has no
TensorFlow classes).

Run with an environment holding transformers==4.46.3, tensorflow-cpu 2.18 and tf-keras 2.18
(not lamina's own), e.g.

    python3 -m venv /work/venv4tf
    /work/venv4tf/bin/pip install tensorflow-cpu==2.18.1 tf-keras==2.18.0 transformers==4.46.3
    /work/venv4tf/bin/python scripts/record_tf_mobilebert_fixtures.py

For every variant below and each of its classes it builds a tiny random TF model (seeded), moves
every weight off its initial value, and writes under tests/fixtures/tf_mobilebert/<variant>/<class>/:

- config.json + tf_model.h5: the model, saved by transformers' own `save_pretrained`;
- reference.npz: the inputs as `in.<arg>` and the outputs of one call (padding mask, token types,
  labels, hidden states and attentions) as `out.<field>` (tuples as `out.<field>.<i>`).

Two choices make the recording test lamina's semantics rather than two known quirks of the
reference: the pad token's embedding row is zero (as PyTorch initialises it; the reference's
trigram input reads a padding neighbour's embedding where lamina reads zeros), and the MLM
decoder equals the word embeddings (the PyTorch classes tie them; the TF reference keeps its own
copy). The layer-norm variant uses `layer_norm_eps=1e-5`: the reference TF classes apply
`layer_norm_eps` to the embedding and output LayerNorms, its PyTorch classes (and lamina) the
torch default 1e-5.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf
import transformers

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tf_mobilebert"
VOCAB = 40
TINY = dict(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12,
            embedding_size=8, intra_bottleneck_size=8, max_position_embeddings=16, type_vocab_size=3,
            num_feedforward_networks=2, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ALL = ["Model", "ForPreTraining", "ForMaskedLM", "ForNextSentencePrediction", "ForSequenceClassification",
       "ForMultipleChoice", "ForTokenClassification", "ForQuestionAnswering"]
# variant: (config switches, classes recorded); every class once, each variant with one head (an
# h5 file costs ~130 KiB of headers even this small, and the fixtures stay under 2 MB)
VARIANTS = {
    "default": ({}, ALL),
    "layer_norm": (dict(normalization_type="layer_norm", layer_norm_eps=1e-5), ["ForPreTraining"]),
    "no_trigram": (dict(trigram_input=False), ["ForSequenceClassification"]),
    "no_bottleneck": (dict(use_bottleneck=False, intra_bottleneck_size=16), ["ForTokenClassification"]),
    "bottleneck_attention": (dict(use_bottleneck_attention=True), ["ForMultipleChoice"]),
    "unshared_key_query": (dict(key_query_shared_bottleneck=False, intra_bottleneck_size=16,
                                classifier_activation=False), ["ForNextSentencePrediction"]),
}


def inputs_for(suffix: str) -> dict[str, np.ndarray]:
    """Two rows of 7 tokens, the second right-padded with the pad id (0) after 5, with token types
    and the labels of the head."""
    rng = np.random.default_rng(3)
    ids = rng.integers(1, VOCAB, (2, 7)).astype(np.int32)
    mask = np.ones((2, 7), np.int32)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    types = rng.integers(0, 3, (2, 7)).astype(np.int32)
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if suffix == "ForMultipleChoice":
        inputs = {k: np.repeat(v[:, None], 3, axis=1) for k, v in inputs.items()}
        inputs["input_ids"][:, 1:, 2] = 7
        inputs["labels"] = np.array([1, 0], np.int32)
    elif suffix == "ForMaskedLM":
        labels = ids.copy()
        labels[:, :2] = -100
        inputs["labels"] = labels
    elif suffix == "ForPreTraining":
        inputs["labels"] = ids[:, ::-1].copy()
        inputs["next_sentence_label"] = np.array([0, 1], np.int32)
    elif suffix == "ForNextSentencePrediction":
        inputs["next_sentence_label"] = np.array([1, 0], np.int32)
    elif suffix == "ForSequenceClassification":
        inputs["labels"] = np.array([2, 0], np.int32)
    elif suffix == "ForTokenClassification":
        inputs["labels"] = ids % 3
    elif suffix == "ForQuestionAnswering":
        inputs["start_positions"] = np.array([1, 6], np.int32)
        inputs["end_positions"] = np.array([3, 4], np.int32)
    return inputs


def perturb(model: tf.keras.Model, rng: np.random.Generator) -> None:
    """Every weight drawn anew (norm scales around 1), so a weight loaded into the wrong place
    shows; then the pad row zeroed and the MLM decoder set to the word embeddings."""
    embeddings = None
    for variable in model.weights:
        name = variable.name
        value = rng.normal(0.0, 0.3, variable.shape)
        if "LayerNorm" in name and ("gamma" in name or name.endswith("weight:0")):
            value = 1.0 + value
        variable.assign(value.astype(np.float32))
        if name.endswith("embeddings/word_embeddings/weight:0"):
            embeddings = variable
    embeddings.assign(tf.tensor_scatter_nd_update(embeddings, [[0]], tf.zeros([1, embeddings.shape[1]])))
    for variable in model.weights:
        if variable.name.endswith("predictions/decoder/weight:0"):
            variable.assign(embeddings)


def flatten(prefix: str, value, out: dict[str, np.ndarray]) -> None:
    if value is None:
        return
    if isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            flatten(f"{prefix}.{index}", item, out)
    else:
        out[prefix] = np.asarray(value)


def record(variant: str, switches: dict, suffix: str, seed: int) -> None:
    tf.keras.utils.set_random_seed(seed)
    if suffix == "ForQuestionAnswering":
        switches = {**switches, "num_labels": 2}  # the reference splits num_labels outputs into start/end
    config = transformers.MobileBertConfig(**{**TINY, **switches})
    model = getattr(transformers, "TFMobileBert" + suffix)(config)
    inputs = inputs_for(suffix)
    model(model.dummy_inputs)
    perturb(model, np.random.default_rng(seed))
    outputs = model(**{k: tf.constant(v) for k, v in inputs.items()}, output_hidden_states=True,
                    output_attentions=True, training=False)
    target = OUT / variant / suffix
    model.save_pretrained(target)
    arrays = {f"in.{k}": v for k, v in inputs.items()}
    for field, value in outputs.items():
        flatten(f"out.{field}", value, arrays)
    np.savez_compressed(target / "reference.npz", **arrays)


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    seed = 0
    for variant, (switches, classes) in VARIANTS.items():
        for suffix in classes:
            record(variant, switches, suffix, seed)
            seed += 1
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB), transformers {transformers.__version__}, tensorflow {tf.__version__}")


if __name__ == "__main__":
    main()
