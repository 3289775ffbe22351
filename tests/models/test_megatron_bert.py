"""MegatronBERT against transformers 5 (absolute positions) and recorded transformers 4.46.3
fixtures (relative positions): every class, token types, padding, losses, gradients, the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lamina
from lamina.errors import ConfigError, InputError, UnsupportedError
from tests.models.encoder_helpers import batch, build_pair, check_auto_classes, check_head, check_round_trip

transformers = pytest.importorskip("transformers")

VOCAB = 50
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=32, type_vocab_size=3, num_labels=3, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "megatron_bert"
HEADS = ["Model", "ForMaskedLM", "ForPreTraining", "ForNextSentencePrediction", "ForSequenceClassification",
         "ForTokenClassification", "ForQuestionAnswering", "ForCausalLM", "ForMultipleChoice"]


def config(**extra) -> transformers.MegatronBertConfig:
    return transformers.MegatronBertConfig(**{**TINY, **extra})


@pytest.mark.parametrize("suffix", HEADS)
def test_every_class_matches_reference(suffix, tmp_path):
    """Outputs, hidden states, attentions, losses and gradients, with token types and padding."""
    extra = dict(num_labels=2) if suffix == "ForQuestionAnswering" else {}
    check_head(transformers, "MegatronBert" + suffix, config(is_decoder=suffix == "ForCausalLM", **extra), tmp_path,
               VOCAB)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_backends_and_tuple_outputs(attn, tmp_path):
    reference, ours = build_pair(transformers, "MegatronBertForMaskedLM", config(), tmp_path, attn=attn)
    inputs = batch(VOCAB)
    expected = reference(**inputs)
    found = ours(**inputs, return_dict=False)
    assert isinstance(found, tuple) and len(found) == 1
    assert (found[0] - expected.logits).abs().max() <= 1e-4


def test_decoder_tuple_output_order(tmp_path):
    reference, ours = build_pair(transformers, "MegatronBertModel", config(is_decoder=True), tmp_path)
    ids = batch(VOCAB)["input_ids"]
    expected = reference(input_ids=ids, use_cache=True, output_hidden_states=True, return_dict=False)
    found = ours(input_ids=ids, use_cache=True, output_hidden_states=True, return_dict=False)
    assert len(found) == len(expected) == 4
    for index in (0, 1):
        assert (found[index] - expected[index]).abs().max() <= 1e-4
    assert found[2].get_seq_length() == expected[2].get_seq_length() == ids.shape[1]
    assert all((a - b).abs().max() <= 1e-4 for a, b in zip(found[3], expected[3]))


def test_regression_and_multi_label_losses(tmp_path):
    for num_labels, labels in ((1, torch.tensor([0.5, -1.0])), (3, torch.tensor([[1.0, 0, 1], [0, 1, 0]]))):
        reference, ours = build_pair(transformers, "MegatronBertForSequenceClassification",
                                     config(num_labels=num_labels), tmp_path / str(num_labels))
        inputs = batch(VOCAB)
        assert abs(reference(**inputs, labels=labels).loss.item() - ours(**inputs, labels=labels).loss.item()) <= 1e-5
        assert ours.config.problem_type == reference.config.problem_type


@pytest.mark.parametrize("variant", ["mlm_relative_key", "mlm_relative_key_query", "clm_relative_key_query"])
def test_relative_positions_match_transformers_4(variant):
    """transformers 5 dropped relative positions; the reference is recorded from 4.46.3."""
    directory = FIXTURES / variant
    recorded = load_file(directory / "reference.safetensors")
    cls = lamina.MegatronBertForCausalLM if variant.startswith("clm") else lamina.MegatronBertForMaskedLM
    model = cls.from_pretrained(directory)
    out = model(input_ids=recorded["input_ids"], attention_mask=recorded["attention_mask"],
                token_type_ids=recorded["token_type_ids"], output_hidden_states=True)
    assert (out.logits - recorded["logits"]).abs().max() <= 1e-4
    for i, hidden in enumerate(out.hidden_states):
        assert (hidden - recorded[f"hidden_states.{i}"]).abs().max() <= 1e-4


@pytest.mark.parametrize("position_embedding_type", ["absolute", "relative_key", "relative_key_query"])
def test_incremental_decoding_equals_full_forward(position_embedding_type):
    torch.manual_seed(0)
    model = lamina.MegatronBertForCausalLM(lamina.MegatronBertConfig(
        **TINY, is_decoder=True, position_embedding_type=position_embedding_type)).eval()
    ids = torch.randint(1, VOCAB, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, 0] = 0  # a padded key must stay hidden from every step
    full = model(input_ids=ids, attention_mask=mask).logits
    out = model(input_ids=ids[:, :4], attention_mask=mask[:, :4], use_cache=True)
    steps = [out.logits]
    cache = out.past_key_values
    for t in range(4, 9):
        out = model(input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        steps.append(out.logits)
    assert cache.get_seq_length() == 9
    real = mask.bool()  # a padded query's own output is arbitrary
    assert (torch.cat(steps, dim=1)[real] - full[real]).abs().max() <= 1e-5


def test_causal_lm_cached_logits_match_reference(tmp_path):
    """Prefill then one cached step, against transformers' own cache."""
    reference, ours = build_pair(transformers, "MegatronBertForCausalLM", config(is_decoder=True), tmp_path)
    ids = batch(VOCAB)["input_ids"]
    with torch.no_grad():
        theirs = reference(input_ids=ids[:, :5], use_cache=True)
        theirs = reference(input_ids=ids[:, 5:6], past_key_values=theirs.past_key_values, use_cache=True).logits
        mine = ours(input_ids=ids[:, :5], use_cache=True)
        mine = ours(input_ids=ids[:, 5:6], past_key_values=mine.past_key_values, use_cache=True).logits
    assert (theirs - mine).abs().max() <= 1e-4


def test_greedy_generate_matches_reference(tmp_path):
    reference, ours = build_pair(transformers, "MegatronBertForCausalLM", config(is_decoder=True), tmp_path)
    prompt = batch(VOCAB)["input_ids"][:, :4]
    expected = reference.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0), expected)


def test_generate_with_relative_positions_equals_uncached_greedy():
    torch.manual_seed(0)
    model = lamina.MegatronBertForCausalLM(lamina.MegatronBertConfig(
        **{**TINY, "max_position_embeddings": 12}, is_decoder=True, position_embedding_type="relative_key_query")).eval()
    tokens = torch.randint(1, VOCAB, (1, 4))
    generated = model.generate(tokens, max_new_tokens=7, do_sample=False, pad_token_id=0)
    for _ in range(7):
        tokens = torch.cat([tokens, model(input_ids=tokens, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, tokens)


@pytest.mark.parametrize("position_embedding_type", ["absolute", "relative_key"])
def test_left_padded_batch_generates_like_each_row_alone(position_embedding_type):
    torch.manual_seed(0)
    model = lamina.MegatronBertForCausalLM(lamina.MegatronBertConfig(
        **TINY, is_decoder=True, position_embedding_type=position_embedding_type)).eval()
    short, long = torch.randint(1, VOCAB, (1, 3)), torch.randint(1, VOCAB, (1, 6))
    ids = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1), long])
    mask = (torch.arange(6) >= torch.tensor([[3], [0]])).long()
    together = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    for row, alone in enumerate((short, long)):
        expected = model.generate(alone, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(together[row, -5:], expected[0, -5:])


def test_padding_does_not_change_unpadded_rows():
    torch.manual_seed(0)
    model = lamina.MegatronBertForMaskedLM(lamina.MegatronBertConfig(**TINY)).eval()
    ids = torch.randint(1, VOCAB, (1, 6))
    alone = model(input_ids=ids).logits
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 3)], dim=1).long()
    together = model(input_ids=padded.repeat(2, 1), attention_mask=mask.repeat(2, 1)).logits
    assert (together[:, :6] - alone).abs().max() <= 1e-5


def test_saved_model_loads_in_transformers(tmp_path):
    check_round_trip(transformers, "MegatronBert", TINY, tmp_path, VOCAB)


def test_auto_classes_and_config_defaults():
    c = lamina.MegatronBertConfig()
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (
        29056, 1024, 24, 16, 4096)
    assert (c.hidden_act, c.max_position_embeddings, c.type_vocab_size, c.layer_norm_eps) == ("gelu", 512, 2, 1e-12)
    assert c.position_embedding_type == "absolute" and c.use_cache and not c.is_decoder
    small = lamina.MegatronBertConfig(**TINY)
    check_auto_classes("MegatronBert", small, ["ForMaskedLM", "ForPreTraining", "ForNextSentencePrediction",
                                              "ForMultipleChoice", "ForCausalLM"])


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="position_embedding_type"):
        lamina.MegatronBertConfig(**TINY, position_embedding_type="rotary")
    with pytest.raises(ConfigError, match="hidden_size"):
        lamina.MegatronBertConfig(**{**TINY, "hidden_size": 30})
    with pytest.raises(UnsupportedError, match="add_cross_attention"):
        lamina.MegatronBertModel(lamina.MegatronBertConfig(**TINY, is_decoder=True, add_cross_attention=True))
    model = lamina.MegatronBertModel(lamina.MegatronBertConfig(**TINY))
    with pytest.raises(InputError, match="outside the vocabulary"):
        model(input_ids=torch.tensor([[1, VOCAB]]))
    with pytest.raises(InputError, match="multiple choice"):
        lamina.MegatronBertForMultipleChoice(lamina.MegatronBertConfig(**TINY))(input_ids=torch.tensor([[1, 2]]))
