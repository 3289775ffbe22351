"""MEGA's surface beyond the reference fixtures: tuples, embeddings input, training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lamina import InputError, MegaConfig, MegaForCausalLM, MegaForMaskedLM, MegaModel

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mega"


def test_tuples_follow_the_dataclass_order():
    model = MegaModel.from_pretrained(FIXTURES / "model_scalenorm_rotary_softmax_types")
    ids = torch.randint(3, 40, (2, 7))
    as_dict = model(ids, output_hidden_states=True)
    as_tuple = model(ids, output_hidden_states=True, return_dict=False)
    assert torch.equal(as_tuple[0], as_dict.last_hidden_state)
    assert torch.equal(as_tuple[1], as_dict.pooler_output)
    assert len(as_tuple[2]) == 3 and torch.equal(as_tuple[2][-1], as_dict.last_hidden_state)

    lm = MegaForCausalLM.from_pretrained(FIXTURES / "clm_scalenorm_rotary_softmax")
    loss, logits = lm(ids, labels=ids, return_dict=False)
    assert loss.dim() == 0 and logits.shape == (2, 7, 40)
    assert len(lm(ids, use_cache=True, return_dict=False)) == 2  # logits, past_key_values


def test_inputs_embeds_equal_input_ids():
    model = MegaForMaskedLM.from_pretrained(FIXTURES / "mlm_layernorm_simple_laplace")
    ids = torch.randint(3, 40, (2, 6))
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(ids).logits)
    with pytest.raises(InputError):
        model(ids, inputs_embeds=embeds)
    with pytest.raises(InputError, match="position_ids"):
        model.mega(ids, position_ids=torch.arange(6)[None])


@pytest.mark.parametrize("featurewise", [False, True])
def test_training_step_reaches_every_parameter(featurewise):
    torch.manual_seed(0)
    config = MegaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, intermediate_size=24,
                        ema_projection_size=4, shared_representation_size=8, nffn_hidden_size=32, max_positions=32,
                        is_decoder=True, bidirectional=False, use_chunking=True, chunk_size=4,
                        normalization_type="batchnorm", use_feature_dropout=featurewise, relative_positional_bias="simple")
    model = MegaForCausalLM(config).train()
    ids = torch.randint(3, 40, (3, 10))
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    # the EMA is differentiated through its FFT convolution
    assert model.mega.layers[0].mega_layer.ema_gate.damping_factor.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    """MEGA runs the layer loop the other models share, recomputation in the backward pass included."""
    torch.manual_seed(0)
    config = MegaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, intermediate_size=24,
                        ema_projection_size=4, shared_representation_size=8, nffn_hidden_size=32, max_positions=32,
                        is_decoder=True, bidirectional=False, use_chunking=True, chunk_size=4,
                        relative_positional_bias="simple", dropout_prob=0.0, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, nffn_activation_dropout_prob=0.0)
    model = MegaForCausalLM(config).train()
    ids = torch.randint(3, 40, (2, 10))
    model(ids, labels=ids).loss.backward()
    plain = {name: param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    layer, calls = model.mega.layers[0], []
    layer_forward = layer.forward

    def counted(*args):
        calls.append(1)
        return layer_forward(*args)

    layer.forward = counted  # (the recomputation runs without forward hooks)
    model(ids, labels=ids, use_cache=False).loss.backward()
    assert len(calls) == 2  # run forward, then again in the backward pass
    for name, param in model.named_parameters():
        assert (param.grad - plain[name]).abs().max() <= 1e-6, name
