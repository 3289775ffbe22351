"""Persimmon parity with transformers: every class, rope scaling none/linear/dynamic, partial
rotary factors, padding, losses, gradients, the cache, configs of both transformers versions and
the chat template."""

import pytest
import torch

import lamina
from lamina.models import persimmon as ours
from lamina.tokenizers.classes import PERSIMMON_CHAT_TEMPLATE
from tests.models.test_gpt2 import logits_token_by_token
from tests.parity import compare_grads, max_diff

transformers = pytest.importorskip("transformers")

CLASSES = ["PersimmonModel", "PersimmonForCausalLM", "PersimmonForSequenceClassification",
           "PersimmonForTokenClassification"]
VOCAB = 89
ROPES = {
    "none": {},
    "linear": {"rope_scaling": {"type": "linear", "factor": 2.0}},
    "dynamic": {"rope_scaling": {"type": "dynamic", "factor": 2.0}},
    "quarter_rotary": {"partial_rotary_factor": 0.25},
    "full_rotary_dynamic": {"partial_rotary_factor": 1.0, "rope_scaling": {"type": "dynamic", "factor": 3.0}},
}


def pair(name, tmp_path, attn="eager", **overrides):
    settings = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=8, pad_token_id=0, num_labels=3,
                    initializer_range=0.2, rope_theta=25000.0)
    settings.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in overrides.items()})
    torch.manual_seed(0)
    reference = getattr(transformers, name)(transformers.PersimmonConfig(**settings)).eval()
    reference.config._attn_implementation = attn
    reference.save_pretrained(tmp_path / name)
    return reference, getattr(ours, name).from_pretrained(tmp_path / name, attn_implementation=attn)


def inputs(seq=11):
    """Longer than max_position_embeddings (8), so dynamic scaling is active; row 1 left-padded."""
    torch.manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, seq))
    mask = torch.ones(2, seq, dtype=torch.long)
    mask[1, :3] = 0
    ids[1, :3] = 0
    return ids, mask


@pytest.mark.parametrize("rope", sorted(ROPES))
@pytest.mark.parametrize("name", CLASSES)
def test_every_class_and_rope_matches_with_padding(tmp_path, name, rope):
    reference, model = pair(name, tmp_path, **ROPES[rope])
    ids, mask = inputs()
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask, output_hidden_states=True)
        found = model(ids, attention_mask=mask, output_hidden_states=True)
    key = "last_hidden_state" if name == "PersimmonModel" else "logits"
    per_token = expected[key].dim() == 3
    assert max_diff(expected[key], found[key], mask if per_token else None) <= 1e-4
    assert len(expected.hidden_states) == len(found.hidden_states)
    for theirs, mine in zip(expected.hidden_states, found.hidden_states):
        assert max_diff(theirs, mine, mask) <= 1e-4


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_backends_and_the_rotary_fraction_matters(tmp_path, attn):
    reference, model = pair("PersimmonForCausalLM", tmp_path, attn, partial_rotary_factor=0.75)
    ids, mask = inputs()
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        assert max_diff(reference(ids, attention_mask=mask).logits, logits, mask) <= 1e-4
        half = pair("PersimmonForCausalLM", tmp_path / "half", attn)[1]
        assert max_diff(half(ids, attention_mask=mask).logits, logits, mask) > 1e-3


def test_losses_match(tmp_path):
    ids, mask = inputs()
    labels = ids.clone()
    labels[1, :3] = -100
    reference, model = pair("PersimmonForCausalLM", tmp_path)
    with torch.no_grad():
        assert max_diff(reference(ids, attention_mask=mask, labels=labels).loss,
                        model(ids, attention_mask=mask, labels=labels).loss) <= 1e-5
    reference, model = pair("PersimmonForSequenceClassification", tmp_path / "seq")
    with torch.no_grad():
        cls_labels = torch.tensor([1, 2])
        assert max_diff(reference(ids, attention_mask=mask, labels=cls_labels).loss,
                        model(ids, attention_mask=mask, labels=cls_labels).loss) <= 1e-5
    reference, model = pair("PersimmonForTokenClassification", tmp_path / "tok")
    token_labels = torch.randint(0, 3, ids.shape)
    with torch.no_grad():
        assert max_diff(reference(ids, attention_mask=mask, labels=token_labels).loss,
                        model(ids, attention_mask=mask, labels=token_labels).loss) <= 1e-5


@pytest.mark.parametrize("name", ["PersimmonForCausalLM", "PersimmonForSequenceClassification"])
def test_gradients_match(tmp_path, name):
    reference, model = pair(name, tmp_path, partial_rotary_factor=0.25)
    reference.train()
    model.train()
    ids, mask = inputs()
    labels = ids.clone() if name == "PersimmonForCausalLM" else torch.tensor([0, 2])
    reference(ids, attention_mask=mask, labels=labels).loss.backward()
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    assert sum(p.grad is not None for p in reference.parameters()) > 20
    compare_grads(model, reference)


@pytest.mark.parametrize("rope", ["none", "linear", "quarter_rotary"])
def test_incremental_decoding_equals_full_forward(tmp_path, rope):
    reference, model = pair("PersimmonForCausalLM", tmp_path, "sdpa", **ROPES[rope])
    ids, mask = inputs(seq=10)
    stepped = logits_token_by_token(model, ids, mask, prompt=6)
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        assert max_diff(full, stepped, mask) <= 1e-4
        assert max_diff(reference(ids, attention_mask=mask).logits, full, mask) <= 1e-4


def test_configs_of_both_transformers_versions_and_the_save_round_trip(tmp_path):
    v4_style = {"model_type": "persimmon", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                "intermediate_size": 64, "vocab_size": VOCAB, "rope_theta": 1000.0, "partial_rotary_factor": 0.25,
                "rope_scaling": {"type": "linear", "factor": 2.0}}
    config = ours.PersimmonConfig(**v4_style)
    assert config.partial_rotary_factor == 0.25 and config.rope_theta == 1000.0
    written = config.to_dict()
    assert written["partial_rotary_factor"] == 0.25 and written["rope_scaling"]["factor"] == 2.0
    assert "rope_parameters" not in written
    theirs = transformers.PersimmonConfig(**written)
    assert theirs.rope_parameters["partial_rotary_factor"] == 0.25
    v5_style = transformers.PersimmonConfig(**v4_style).to_dict()
    assert ours.PersimmonConfig(**v5_style).partial_rotary_factor == 0.25
    defaults = ours.PersimmonConfig()
    assert (defaults.vocab_size, defaults.hidden_size, defaults.intermediate_size, defaults.num_hidden_layers,
            defaults.num_attention_heads, defaults.hidden_act, defaults.max_position_embeddings,
            defaults.rope_theta, defaults.partial_rotary_factor, defaults.qk_layernorm, defaults.layer_norm_eps) == (
        262144, 4096, 16384, 36, 64, "relu2", 16384, 25000.0, 0.5, True, 1e-5)
    with pytest.raises(lamina.ConfigError, match="partial_rotary_factor"):
        ours.PersimmonConfig(hidden_size=48, num_attention_heads=4, partial_rotary_factor=1.5)

    reference, model = pair("PersimmonForCausalLM", tmp_path, partial_rotary_factor=0.25)
    model.save_pretrained(tmp_path / "saved")
    again = transformers.PersimmonForCausalLM.from_pretrained(tmp_path / "saved").eval()
    auto = lamina.AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    ids, mask = inputs()
    with torch.no_grad():
        assert max_diff(again(ids).logits, reference(ids).logits) <= 1e-4
        assert max_diff(auto(ids).logits, reference(ids).logits) <= 1e-4
    theirs = reference.state_dict()
    assert all(torch.equal(tensor, theirs[name]) for name, tensor in again.state_dict().items())


def test_chat_template_renders_adepts_prompt():
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Environment().from_string(PERSIMMON_CHAT_TEMPLATE)
    one = template.render(messages=[{"role": "user", "content": "Hi there"}], add_generation_prompt=True)
    assert one == "human: Hi there\n\nadept:"
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert template.render(messages=turns, add_generation_prompt=True) == "human: a\n\nadept: b\n\nhuman: c\n\nadept:"


@pytest.mark.parametrize("rope", ["none", "quarter_rotary"])
def test_greedy_generate_matches_with_left_padding(tmp_path, rope):
    reference, model = pair("PersimmonForCausalLM", tmp_path, "sdpa", **ROPES[rope])
    ids, mask = inputs(seq=6)
    settings = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    expected = reference.generate(ids, **settings)
    assert torch.equal(expected, model.generate(ids, **settings))
