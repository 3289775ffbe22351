"""Mistral, Ministral and Mixtral against transformers: every class, padded batches, both
backends, losses and gradients."""

from __future__ import annotations

import pytest
import torch

import lamina
from tests.parity import compare_grads, max_diff

transformers = pytest.importorskip("transformers")

VOCAB = 64
TINY = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0, num_labels=3,
)
FAMILIES = {
    "mistral": dict(sliding_window=4),
    "ministral": dict(sliding_window=4, num_hidden_layers=3, layer_types=["full_attention", "sliding_attention", "sliding_attention"]),
    "mixtral": dict(sliding_window=4, num_local_experts=4, num_experts_per_tok=2),
}
CLASSES = ["Model", "ForCausalLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"]
PREFIX = {"mistral": "Mistral", "ministral": "Ministral", "mixtral": "Mixtral"}


def build_pair(family: str, suffix: str, tmp_path, attn: str = "sdpa", **extra):
    torch.manual_seed(0)
    name = PREFIX[family] + suffix
    config = getattr(transformers, PREFIX[family] + "Config")(**{**TINY, **FAMILIES[family], **extra})
    reference = getattr(transformers, name)(config).eval()
    reference.save_pretrained(tmp_path)
    ours = getattr(lamina, name).from_pretrained(tmp_path, attn_implementation=attn).eval()
    reference.config._attn_implementation = attn
    reference.set_attn_implementation(attn)
    return ours, reference


def batch(padding: str):
    torch.manual_seed(1)
    ids = torch.randint(1, VOCAB, (3, 10))
    mask = torch.ones_like(ids)
    for row, pad in enumerate((0, 3, 6)):
        if pad:
            if padding == "right":
                mask[row, -pad:] = 0
                ids[row, -pad:] = 0
            else:
                mask[row, :pad] = 0
                ids[row, :pad] = 0
    return ids, mask


def outputs_of(suffix: str, out) -> list[torch.Tensor]:
    if suffix == "Model":
        return [out.last_hidden_state]
    if suffix == "ForQuestionAnswering":
        return [out.start_logits, out.end_logits]
    return [out.logits]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("suffix", CLASSES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_outputs_match_reference(family, suffix, attn, padding, tmp_path):
    ours, reference = build_pair(family, suffix, tmp_path, attn)
    ids, mask = batch(padding)
    with torch.no_grad():
        got = outputs_of(suffix, ours(input_ids=ids, attention_mask=mask))
        want = outputs_of(suffix, reference(input_ids=ids, attention_mask=mask))
    for a, b in zip(got, want):
        where = mask if a.dim() >= 2 and a.shape[:2] == mask.shape else None
        assert max_diff(a, b, where) <= 1e-4


def labels_for(suffix: str, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    if suffix == "ForCausalLM":
        return {"labels": ids.masked_fill(mask == 0, -100)}
    if suffix == "ForSequenceClassification":
        return {"labels": torch.tensor([0, 2, 1])}
    if suffix == "ForTokenClassification":
        return {"labels": torch.randint(0, 3, ids.shape).masked_fill(mask == 0, -100)}
    return {"start_positions": torch.tensor([1, 4, 12]), "end_positions": torch.tensor([3, 5, 2])}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("suffix", CLASSES[1:])
def test_losses_and_gradients_match_reference(family, suffix, tmp_path):
    ours, reference = build_pair(family, suffix, tmp_path, "eager")
    ours.train()
    reference.train()
    ids, mask = batch("right")
    extra = labels_for(suffix, ids, mask)
    torch.manual_seed(3)  # the same dropout masks on both sides
    loss = ours(input_ids=ids, attention_mask=mask, **extra).loss
    torch.manual_seed(3)
    ref_loss = reference(input_ids=ids, attention_mask=mask, **extra).loss
    assert abs(loss.item() - ref_loss.item()) <= 1e-5
    loss.backward()
    ref_loss.backward()
    compare_grads(ours, reference)


@pytest.mark.parametrize("problem", ["regression", "single_label_classification", "multi_label_classification"])
def test_sequence_classification_problem_types(problem, tmp_path):
    extra = {"num_labels": 1} if problem == "regression" else {}
    ours, reference = build_pair("mistral", "ForSequenceClassification", tmp_path, problem_type=problem, **extra)
    ids, mask = batch("left")
    labels = {
        "regression": torch.randn(3),
        "single_label_classification": torch.tensor([2, 0, 1]),
        "multi_label_classification": torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]),
    }[problem]
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask, labels=labels)
        want = reference(input_ids=ids, attention_mask=mask, labels=labels)
    assert abs(got.loss.item() - want.loss.item()) <= 1e-5
    assert max_diff(got.logits, want.logits) <= 1e-4


def test_hidden_states_attentions_and_tuples(tmp_path):
    ours, reference = build_pair("mistral", "ForCausalLM", tmp_path, "eager")
    ids, mask = batch("right")
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        want = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        as_tuple = ours(input_ids=ids, attention_mask=mask, return_dict=False, use_cache=False)
    assert len(got.hidden_states) == len(want.hidden_states) == 3
    for a, b in zip(got.hidden_states, want.hidden_states):
        assert max_diff(a, b, mask) <= 1e-4
    for a, b in zip(got.attentions, want.attentions):
        assert max_diff(a.transpose(1, 2), b.transpose(1, 2), mask) <= 1e-4  # rows of real queries
    assert isinstance(as_tuple, tuple) and max_diff(as_tuple[0], want.logits, mask) <= 1e-4


def test_logits_to_keep(tmp_path):
    ours, reference = build_pair("mistral", "ForCausalLM", tmp_path)
    ids, _ = batch("right")
    with torch.no_grad():
        got = ours(ids, logits_to_keep=1).logits
        want = reference(ids, logits_to_keep=1).logits
    assert got.shape == (3, 1, VOCAB) and max_diff(got, want) <= 1e-4


def test_mixtral_router_logits_and_aux_loss(tmp_path):
    ours, reference = build_pair("mixtral", "ForCausalLM", tmp_path)
    for padding in ("none", "right"):
        ids, mask = batch("right")
        mask_arg = None if padding == "none" else mask
        labels = ids.masked_fill(mask == 0, -100)
        with torch.no_grad():
            got = ours(ids, attention_mask=mask_arg, labels=labels, output_router_logits=True)
            want = reference(ids, attention_mask=mask_arg, labels=labels, output_router_logits=True)
        rows = mask.view(-1)  # padded queries attend to nothing; their logits are not compared
        for a, b in zip(got.router_logits, want.router_logits):
            assert max_diff(a, b, rows) <= 1e-4
        assert abs(got.aux_loss.item() - want.aux_loss.item()) <= 1e-5
        assert abs(got.loss.item() - want.loss.item()) <= 1e-5
    with torch.no_grad():
        plain = ours(ids, output_router_logits=False)
    assert plain.aux_loss is None and plain.router_logits is None


def test_llama_and_qwen2_run_on_the_decoder(tmp_path):
    torch.manual_seed(0)
    for name, extra in (("Llama", dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True)), ("Qwen2", {})):
        config = getattr(transformers, name + "Config")(**{**TINY, **extra})
        reference = getattr(transformers, name + "ForCausalLM")(config).eval()
        reference.save_pretrained(tmp_path / name)
        ours = lamina.AutoModelForCausalLM.from_pretrained(tmp_path / name)
        assert type(ours).__name__ == name + "ForCausalLM"
        ids, mask = batch("left")
        with torch.no_grad():
            assert max_diff(ours(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits, mask) <= 1e-4


def test_gradient_checkpointing_gives_same_gradients(tmp_path):
    ours, _ = build_pair("mistral", "ForCausalLM", tmp_path, "eager")
    ours.train()
    ids, mask = batch("right")
    ours(input_ids=ids, labels=ids).loss.backward()
    plain = {n: p.grad.clone() for n, p in ours.named_parameters()}
    ours.zero_grad()
    ours.gradient_checkpointing_enable()
    ours(input_ids=ids, labels=ids).loss.backward()
    for name, param in ours.named_parameters():
        assert torch.allclose(param.grad, plain[name], atol=1e-6), name


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 2.0},
        {"rope_type": "dynamic", "factor": 2.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 4},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4},
    ],
    ids=lambda r: r["rope_type"],
)
def test_rope_scaling_matches_reference(rope, tmp_path):
    """Scaled rotary schedules, with the input longer than the trained length (dynamic rescales)."""
    ours, reference = build_pair("mistral", "ForCausalLM", tmp_path, max_position_embeddings=6,
                                 rope_parameters={**rope, "rope_theta": 10000.0})
    ids, mask = batch("right")
    with torch.no_grad():
        for length in (10, 4, 10):  # dynamic grows, returns to the original frequencies, grows again
            assert max_diff(ours(ids[:, :length]).logits, reference(ids[:, :length]).logits) <= 1e-4
