"""MobileBERT against transformers 5: every class, both norms, trigram on and off, the bottleneck
variants, 1 and 4 feed-forward networks, token types, padding, losses, gradients, fp16."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import lamina
from lamina.errors import ConfigError
from tests.models.encoder_helpers import batch, build_pair, check_auto_classes, check_head, check_round_trip

transformers = pytest.importorskip("transformers")

VOCAB = 50
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
            embedding_size=16, intra_bottleneck_size=16, max_position_embeddings=32, type_vocab_size=3, num_labels=3,
            attention_probs_dropout_prob=0.0)
HEADS = ["Model", "ForMaskedLM", "ForPreTraining", "ForNextSentencePrediction", "ForSequenceClassification",
         "ForMultipleChoice", "ForTokenClassification", "ForQuestionAnswering"]
VARIANTS = {
    "layer_norm": dict(normalization_type="layer_norm"),
    "no_trigram": dict(trigram_input=False),
    "no_bottleneck": dict(use_bottleneck=False),
    "bottleneck_attention": dict(use_bottleneck_attention=True),
    "unshared_key_query": dict(key_query_shared_bottleneck=False, intra_bottleneck_size=32),
    "one_ffn_layer_norm_untied": dict(num_feedforward_networks=1, normalization_type="layer_norm",
                                      tie_word_embeddings=False),
    "plain_embeddings": dict(trigram_input=False, embedding_size=32, classifier_activation=False),
}


def config(**extra) -> transformers.MobileBertConfig:
    return transformers.MobileBertConfig(**{**TINY, **extra})


@pytest.mark.parametrize("suffix", HEADS)
def test_every_class_matches_reference(suffix, tmp_path):
    """Defaults: NoNorm, trigram input, shared key/query bottleneck, 4 feed-forward networks."""
    extra = dict(num_labels=2) if suffix == "ForQuestionAnswering" else {}
    check_head(transformers, "MobileBert" + suffix, config(**extra), tmp_path, VOCAB)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_match_reference(variant, tmp_path):
    suffix = "ForSequenceClassification" if variant == "plain_embeddings" else "ForPreTraining"
    check_head(transformers, "MobileBert" + suffix, config(**VARIANTS[variant]), tmp_path, VOCAB)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_backends_and_tuple_outputs(attn, tmp_path):
    reference, ours = build_pair(transformers, "MobileBertForMaskedLM", config(), tmp_path, attn=attn)
    inputs = batch(VOCAB)
    expected = reference(**inputs)
    found = ours(**inputs, return_dict=False)
    assert isinstance(found, tuple) and len(found) == 1
    assert (found[0] - expected.logits).abs().max() <= 1e-4


def test_padding_does_not_change_unpadded_rows():
    """Even with a non-zero pad embedding, which the trigram input would otherwise read."""
    torch.manual_seed(0)
    model = lamina.MobileBertForMaskedLM(lamina.MobileBertConfig(**TINY)).eval()
    with torch.no_grad():
        model.mobilebert.embeddings.word_embeddings.weight[0].normal_()
    ids = torch.randint(1, VOCAB, (1, 6))
    alone = model(input_ids=ids).logits
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], dim=1).long()
    together = model(input_ids=padded.repeat(2, 1), attention_mask=mask.repeat(2, 1)).logits
    assert (together[:, :6] - alone).abs().max() <= 1e-5
    # the pad embedding does reach the last token when nothing says it is padding
    unmasked = model(input_ids=padded).logits
    assert (unmasked[:, :6] - alone).abs().max() > 1e-3


def test_fp16_stays_finite_where_the_reference_does(tmp_path):
    reference, ours32 = build_pair(transformers, "MobileBertForMaskedLM", config(), tmp_path)
    ours16 = lamina.MobileBertForMaskedLM.from_pretrained(tmp_path, dtype=torch.float16)
    assert ours16.dtype == torch.float16
    inputs = batch(VOCAB)
    with torch.no_grad():
        theirs = reference.half()(**inputs).logits
        mine = ours16(**inputs).logits
        full = ours32(**inputs).logits
    assert mine.dtype == torch.float16
    assert torch.isfinite(theirs).all() and torch.isfinite(mine).all()
    assert (mine.float() - full).abs().max() <= 2e-2


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = lamina.MobileBertForMaskedLM(lamina.MobileBertConfig(**TINY))
    inputs = batch(VOCAB)
    labels = inputs["input_ids"]
    model(**inputs, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(**inputs, labels=labels).loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad - plain[name]).abs().max() <= 1e-6, name


def test_saved_model_loads_in_transformers(tmp_path):
    check_round_trip(transformers, "MobileBert", TINY, tmp_path, VOCAB)


def test_untied_checkpoint_of_transformers_4_layout(tmp_path):
    """transformers 4.x stored an untied decoder's bias only as `cls.predictions.bias`."""
    reference, _ = build_pair(transformers, "MobileBertForMaskedLM", config(tie_word_embeddings=False), tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    tensors["cls.predictions.bias"] = tensors.pop("cls.predictions.decoder.bias")
    save_file(tensors, path)
    ours = lamina.MobileBertForMaskedLM.from_pretrained(tmp_path)
    inputs = batch(VOCAB)
    assert (ours(**inputs).logits - reference(**inputs).logits).abs().max() <= 1e-4


def test_auto_classes_and_config_defaults():
    c = lamina.MobileBertConfig()
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (
        30522, 512, 24, 4, 512)
    assert (c.hidden_act, c.embedding_size, c.intra_bottleneck_size, c.num_feedforward_networks) == ("relu", 128, 128, 4)
    assert c.trigram_input and c.use_bottleneck and c.key_query_shared_bottleneck and not c.use_bottleneck_attention
    assert c.normalization_type == "no_norm" and c.classifier_activation and c.classifier_dropout is None
    assert c.true_hidden_size == 128
    assert lamina.MobileBertConfig(use_bottleneck=False).true_hidden_size == 512
    small = lamina.MobileBertConfig(**TINY)
    check_auto_classes("MobileBert", small, ["ForMaskedLM", "ForPreTraining", "ForNextSentencePrediction",
                                            "ForMultipleChoice"])
    with pytest.raises(lamina.UnsupportedError, match="AutoModelForCausalLM"):
        lamina.AutoModelForCausalLM.from_config(small)


def test_errors_name_the_problem():
    model = lamina.MobileBertModel(lamina.MobileBertConfig(**TINY))
    with pytest.raises(lamina.InputError, match="attention_mask"):
        model(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 1, 2, 2))
    with pytest.raises(ConfigError, match="normalization_type"):
        lamina.MobileBertConfig(**TINY, normalization_type="batch_norm")
    with pytest.raises(ConfigError, match="num_attention_heads"):
        lamina.MobileBertConfig(**{**TINY, "num_attention_heads": 5})
