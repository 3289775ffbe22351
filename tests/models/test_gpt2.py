"""GPT-2 parity with transformers: every class, both attention flags, eager and sdpa, padding,
losses, gradients, the cache, token types, old checkpoints and the save round trip."""

import pytest
import torch

import lamina
from lamina.models import gpt2 as ours
from tests.parity import compare_grads

transformers = pytest.importorskip("transformers")

CLASSES = [
    "GPT2Model", "GPT2LMHeadModel", "GPT2ForSequenceClassification", "GPT2ForTokenClassification",
    "GPT2ForQuestionAnswering", "GPT2DoubleHeadsModel",
]
VOCAB = 97


def tiny_config(**overrides):
    settings = dict(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=3, n_head=4, pad_token_id=0,
                    bos_token_id=1, eos_token_id=2, num_labels=3, initializer_range=0.2)
    settings.update(overrides)
    return transformers.GPT2Config(**settings)


def pair(name, tmp_path, attn="eager", **overrides):
    """The transformers model (seeded, eval) and lamina's load of its saved files."""
    torch.manual_seed(0)
    reference = getattr(transformers, name)(tiny_config(**overrides)).eval()
    reference.config._attn_implementation = attn
    reference.save_pretrained(tmp_path / name)
    return reference, getattr(ours, name).from_pretrained(tmp_path / name, attn_implementation=attn)


def inputs(batch=2, seq=7, padded=True):
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    if padded:
        mask[1, :3] = 0  # left padding of the second row
        ids[1, :3] = 0
    return ids, mask


def assert_close(a, b, atol=1e-4, where=None):
    if where is not None:
        a, b = a[where.bool()], b[where.bool()]
    assert a.shape == b.shape
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= atol, diff


def outputs_match(reference_out, lamina_out, mask):
    """Every tensor output agrees; per-token ones only where the mask has real tokens."""
    for key in reference_out.keys():
        # caches are compared by what they give the next step; lamina's GPT-2 has no cross-attention
        if key in ("past_key_values", "cache", "cross_attentions"):
            continue
        theirs, mine = reference_out[key], lamina_out[key]
        if isinstance(theirs, tuple):
            assert len(theirs) == len(mine), key
            for t, m in zip(theirs, mine):
                per_token = t.dim() == 3 and mask is not None
                assert_close(t, m, where=mask if per_token else None)
        elif theirs.dim() >= 2 and mask is not None and theirs.shape[:2] == mask.shape:
            assert_close(theirs, mine, where=mask)
        else:
            assert_close(theirs, mine)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", CLASSES[:-1])
def test_every_class_matches_with_padding(tmp_path, name, attn):
    reference, model = pair(name, tmp_path, attn)
    ids, mask = inputs()
    flags = dict(output_hidden_states=True, output_attentions=attn == "eager")
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask, **flags)
        found = model(ids, attention_mask=mask, **flags)
    outputs_match(expected, found, mask)
    with torch.no_grad():
        as_tuple = model(ids, attention_mask=mask, return_dict=False)
        # transformers' positional order: (input_ids, past_key_values, attention_mask) but for QA
        positional = model(ids, mask) if name == "GPT2ForQuestionAnswering" else model(ids, None, mask)
    assert torch.equal(as_tuple[0], found[0])
    assert torch.equal(positional[0], found[0])


def test_question_answering_takes_its_arguments_in_the_reference_order(tmp_path):
    """transformers' GPT2ForQuestionAnswering takes `token_type_ids` third and `position_ids` fourth
    (its other heads take `past_key_values` second)."""
    reference, model = pair("GPT2ForQuestionAnswering", tmp_path)
    ids, mask = inputs()
    types = torch.randint(0, VOCAB, ids.shape)
    positions = torch.arange(ids.shape[1]).flip(0)[None].expand(2, -1)
    with torch.no_grad():
        expected = reference(ids, mask, types, positions)
        found = model(ids, mask, types, positions)
    assert_close(expected.start_logits, found.start_logits, where=mask)
    assert_close(expected.end_logits, found.end_logits, where=mask)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "scale_weights,inverse_layer,upcast",
    [(True, True, False), (False, False, False), (True, False, True), (True, True, True), (False, True, True)],
)
def test_attention_flags_on_every_backend(tmp_path, attn, scale_weights, inverse_layer, upcast):
    reference, model = pair(
        "GPT2LMHeadModel", tmp_path, attn, scale_attn_weights=scale_weights,
        scale_attn_by_inverse_layer_idx=inverse_layer, reorder_and_upcast_attn=upcast,
    )
    ids, mask = inputs()
    with torch.no_grad():
        assert_close(reference(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits, where=mask)
        # the flags change the result, so the comparison above can fail
        if attn == "eager" and (inverse_layer or not scale_weights):
            plain = pair("GPT2LMHeadModel", tmp_path / "plain", attn)[1]
            assert (plain(ids).logits - model(ids).logits).abs().max() > 1e-3


def test_double_heads_matches_with_choices_and_losses(tmp_path):
    reference, model = pair("GPT2DoubleHeadsModel", tmp_path, summary_activation="tanh", summary_first_dropout=0.0)
    torch.manual_seed(2)
    ids = torch.randint(3, VOCAB, (2, 3, 6))
    token_types = torch.randint(3, VOCAB, (2, 3, 6))
    mc_token_ids = torch.tensor([[5, 4, 3], [2, 5, 1]])
    labels, mc_labels = ids.clone(), torch.tensor([2, 0])
    labels[0, 0, :2] = -100
    kwargs = dict(token_type_ids=token_types, mc_token_ids=mc_token_ids, labels=labels, mc_labels=mc_labels,
                  output_hidden_states=True)
    with torch.no_grad():
        expected, found = reference(ids, **kwargs), model(ids, **kwargs)
    assert found.logits.shape == (2, 3, 6, VOCAB) and found.mc_logits.shape == (2, 3)
    outputs_match(expected, found, None)
    assert_close(expected.loss, found.loss, atol=1e-5)
    assert_close(expected.mc_loss, found.mc_loss, atol=1e-5)
    renamed = {"cache": "past_key_values"}  # transformers ≥ 5.25's name for the same field
    assert found.keys() == [renamed.get(k, k) for k in expected.keys()]


def test_losses_match(tmp_path):
    ids, mask = inputs()
    labels = ids.clone()
    labels[1, :3] = -100
    reference, model = pair("GPT2LMHeadModel", tmp_path)
    with torch.no_grad():
        assert_close(reference(ids, attention_mask=mask, labels=labels).loss,
                     model(ids, attention_mask=mask, labels=labels).loss, atol=1e-5)
    for problem, labels in (
        ("single_label_classification", torch.tensor([2, 0])),
        ("regression", torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 0.3]])),
        ("multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])),
    ):
        reference, model = pair("GPT2ForSequenceClassification", tmp_path / problem, problem_type=problem)
        with torch.no_grad():
            assert_close(reference(ids, attention_mask=mask, labels=labels).loss,
                         model(ids, attention_mask=mask, labels=labels).loss, atol=1e-5)
    token_labels = torch.randint(0, 3, ids.shape)
    token_labels[1, :3] = -100
    reference, model = pair("GPT2ForTokenClassification", tmp_path / "tok")
    with torch.no_grad():
        assert_close(reference(ids, attention_mask=mask, labels=token_labels).loss,
                     model(ids, attention_mask=mask, labels=token_labels).loss, atol=1e-5)
    reference, model = pair("GPT2ForQuestionAnswering", tmp_path / "qa")
    spans = dict(start_positions=torch.tensor([1, 5]), end_positions=torch.tensor([3, 40]))
    with torch.no_grad():
        assert_close(reference(ids, attention_mask=mask, **spans).loss, model(ids, attention_mask=mask, **spans).loss,
                     atol=1e-5)


@pytest.mark.parametrize("name", ["GPT2LMHeadModel", "GPT2ForTokenClassification"])
def test_gradients_match(tmp_path, name):
    reference, model = pair(name, tmp_path, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, classifier_dropout=0.0)
    reference.train()
    model.train()
    ids, mask = inputs()
    labels = ids.clone() if name == "GPT2LMHeadModel" else torch.randint(0, 3, ids.shape)
    reference(ids, attention_mask=mask, labels=labels).loss.backward()
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    assert sum(p.grad is not None for p in reference.parameters()) > 20
    compare_grads(model, reference)


@torch.no_grad()
def logits_token_by_token(model, ids, mask, prompt):
    """Logits of a cached prefill of `prompt` tokens, then one cached step per further token."""
    out = model(ids[:, :prompt], attention_mask=mask[:, :prompt], use_cache=True)
    steps = [out.logits]
    for t in range(prompt, ids.shape[1]):
        out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=out.past_key_values,
                    use_cache=True)
        steps.append(out.logits)
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_incremental_decoding_equals_full_forward(tmp_path, attn):
    reference, model = pair("GPT2LMHeadModel", tmp_path, attn)
    ids, mask = inputs(seq=9)
    stepped = logits_token_by_token(model, ids, mask, prompt=5)
    with torch.no_grad():
        assert_close(model(ids, attention_mask=mask).logits, stepped, where=mask)
        # and the reference agrees on the unpadded row
        assert_close(reference(ids[:1]).logits, stepped[:1])


def test_token_type_ids_and_position_ids(tmp_path):
    reference, model = pair("GPT2ForSequenceClassification", tmp_path)
    ids, mask = inputs()
    types = torch.randint(0, 5, ids.shape)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = reference(ids, attention_mask=mask, token_type_ids=types, position_ids=positions).logits
        found = model(ids, attention_mask=mask, token_type_ids=types, position_ids=positions).logits
        assert_close(expected, found)
        assert (found - model(ids, attention_mask=mask, position_ids=positions).logits).abs().max() > 1e-4


def test_old_checkpoint_buffers_are_ignored_and_saves_load_in_transformers(tmp_path):
    from safetensors.torch import load_file, save_file

    reference, _ = pair("GPT2LMHeadModel", tmp_path)
    weights = load_file(tmp_path / "GPT2LMHeadModel" / "model.safetensors")
    for i in range(3):  # what GPT-2 checkpoints of transformers 2.x-4.x carried
        weights[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
        weights[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(weights, tmp_path / "GPT2LMHeadModel" / "model.safetensors")
    model = lamina.AutoModelForCausalLM.from_pretrained(tmp_path / "GPT2LMHeadModel")
    assert type(model).__name__ == "GPT2LMHeadModel"
    model.save_pretrained(tmp_path / "resaved")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "resaved").eval()
    ids, _ = inputs(padded=False)
    with torch.no_grad():
        assert_close(again(ids).logits, model(ids).logits)
        assert_close(again(ids).logits, reference(ids).logits)


def test_base_checkpoint_into_head_and_config_aliases(tmp_path):
    reference, base = pair("GPT2Model", tmp_path)
    head = ours.GPT2LMHeadModel.from_pretrained(tmp_path / "GPT2Model")
    ids, _ = inputs(padded=False)
    with torch.no_grad():
        assert_close(head(ids).logits, reference(ids).last_hidden_state @ reference.wte.weight.T)
    config = ours.GPT2Config(n_embd=64, n_layer=2, n_head=8, n_positions=16)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.max_position_embeddings) == (64, 2, 8, 16)
    saved = config.to_dict()
    assert saved["n_embd"] == 64 and "hidden_size" not in saved
    assert transformers.GPT2Config(**saved).hidden_size == 64
    defaults = ours.GPT2Config()
    assert (defaults.vocab_size, defaults.n_embd, defaults.activation_function, defaults.summary_type) == (
        50257, 768, "gelu_new", "cls_index")


@pytest.mark.parametrize("name", ["GPT2LMHeadModel", "GPT2DoubleHeadsModel"])
def test_greedy_generate_matches_with_left_padding(tmp_path, name):
    reference, model = pair(name, tmp_path, "sdpa", scale_attn_by_inverse_layer_idx=True)
    ids, mask = inputs()
    settings = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    expected = reference.generate(ids, **settings)
    found = model.generate(ids, **settings)
    assert torch.equal(expected, found)
    alone = model.generate(ids[1:, 3:], max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(alone[0], found[1, 3:])


def test_unsupported_settings_are_named():
    with pytest.raises(lamina.UnsupportedError, match="summary_type"):
        ours.GPT2DoubleHeadsModel(ours.GPT2Config(n_embd=16, n_layer=1, n_head=2, summary_type="attn"))
    assert ours.GPT2LMHeadModel(ours.GPT2Config(n_embd=16, n_layer=1, n_head=2, summary_type="attn"))
    with pytest.raises(lamina.UnsupportedError, match="cross"):
        ours.GPT2Model(ours.GPT2Config(n_embd=16, n_layer=1, n_head=2, add_cross_attention=True))
    with pytest.raises(lamina.ConfigError, match="n_head"):
        ours.GPT2Config(n_embd=16, n_head=3)
    model = ours.GPT2Model(ours.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=10))
    with pytest.raises(lamina.InputError, match="exactly one"):
        model()
    with pytest.raises(lamina.InputError, match="token id 10"):
        model(torch.tensor([[1, 2]]), token_type_ids=torch.tensor([[0, 10]]))


@pytest.mark.parametrize("name", ["GPT2ForTokenClassification", "GPT2DoubleHeadsModel"])
def test_heads_save_under_the_reference_names(tmp_path, name):
    reference, model = pair(name, tmp_path)
    model.save_pretrained(tmp_path / "saved")
    again = getattr(transformers, name).from_pretrained(tmp_path / "saved")
    theirs = reference.state_dict()
    mine = again.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[key], theirs[key]) for key in theirs)
