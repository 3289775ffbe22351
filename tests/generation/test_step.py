"""The step object (`generation.step`): what it keeps on the model, the step it chooses, and the
`Step` contract for a batch whose rows are at different positions (eager and native steps)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lamina import kernels
from lamina.generation import GenerationConfig, native_step
from lamina.generation.step import decode_steps, module_state
from lamina.models.decoder import DecoderSpec
from lamina.models.mistral import MistralConfig, MistralForCausalLM

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=4)
needs_kernels = pytest.mark.skipif(kernels.ops() is None, reason="lamina's kernels do not build here")


def _model(native: bool = True) -> MistralForCausalLM:
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(**TINY)).eval()
    model.native_decode = native
    return model


def test_the_model_keeps_one_object_outside_its_module_state():
    model = _model()
    attributes, state = set(vars(model)), module_state(model)
    model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert set(vars(model)) - attributes == {"_decode_steps"}
    assert module_state(model) == state  # what generate keeps does not make the step look changed
    steps = decode_steps(model)
    assert steps is decode_steps(model) and steps.generated_tokens == 3
    expected = "native" if kernels.ops() is not None else "eager"
    assert steps.last_kind == expected
    model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False, use_cache=False)
    assert steps.last_kind == "forward"
    steps.forget()
    assert steps.generated_tokens == 0 and steps.last_kind is None


def _decode(model, native, prompts, offsets, new_tokens):
    """Greedy logits `(new_tokens, rows, vocab)` of rows whose prompts start at slot `offsets[row]`
    (the slots before it masked), every row at its own position, through the prepared step."""
    model.native_decode = native
    length = max(offset + len(prompt) for prompt, offset in zip(prompts, offsets))
    capacity = length + new_tokens
    prepared = decode_steps(model).prepare(GenerationConfig(), len(prompts), capacity, new_tokens)
    assert prepared.kind == ("native" if native else "eager")
    tokens = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.ones(len(prompts), capacity, dtype=torch.long)
    positions = torch.ones(len(prompts), length, dtype=torch.long)
    for row, (prompt, offset) in enumerate(zip(prompts, offsets)):
        tokens[row, offset:offset + len(prompt)] = torch.tensor(prompt)
        mask[row, :offset] = 0
        positions[row, offset:offset + len(prompt)] = torch.arange(len(prompt))
    out = []
    with torch.no_grad():
        logits = model(input_ids=tokens, attention_mask=mask[:, :length], position_ids=positions,
                       past_key_values=prepared.cache, cache_position=torch.arange(length), use_cache=True).logits[:, -1]
        prepared.cache.advance(length)
        position = positions[:, -1:]
        for step in range(new_tokens):
            position = position + 1
            logits = prepared.step(logits.argmax(-1)[:, None], position, torch.tensor([length + step]),
                                   mask if not bool(mask.all()) else None, prepared.cache).float()
            prepared.cache.advance(1)
            out.append(logits)
    return torch.stack(out)


@pytest.mark.parametrize("native", [False, pytest.param(True, marks=needs_kernels)])
def test_a_step_serves_rows_at_different_positions(native):
    """Row 1 joins at slot 3 of row 0's run: its slots and positions stay 3 apart, and its logits are
    those of the row decoded alone, window-4 layers included (ten steps go round their ring)."""
    model = _model()
    prompts = [[11, 12, 13, 14, 15, 16, 17], [21, 22, 23, 24]]
    together = _decode(model, native, prompts, [0, 3], 10)
    for row, prompt in enumerate(prompts):
        alone = _decode(model, native, [prompt], [0], 10)
        torch.testing.assert_close(together[:, row], alone[:, 0], rtol=1e-4, atol=1e-5)


def test_the_native_step_runs_only_the_maths_it_declares():
    """An unknown value of a known switch, or a switch the native step has never heard of, leaves
    the model to its own step; the spec's maths name every switch but the sizes."""
    spec = _model().decoder.decoder_spec
    maths = spec.step_maths()
    assert native_step.implements(maths)
    assert set(maths) - {"rotary"} | DecoderSpec.SIZES | {"rotary_dim"} == {item.name for item in dataclasses.fields(DecoderSpec)}
    assert not native_step.implements({**maths, "norm": "scale"})
    assert not native_step.implements({**maths, "logit_softcap": 30.0})
    assert not native_step.implements(dataclasses.replace(spec, rotary_dim=8).step_maths())

    @dataclasses.dataclass
    class NewSpec(DecoderSpec):
        logit_softcap: float = 0.0

    model = _model()
    model.decoder.decoder_spec = NewSpec(**{item.name: getattr(spec, item.name) for item in dataclasses.fields(spec)})
    assert native_step.native_step(model) is None
    model.decoder.decoder_spec = spec
    if kernels.ops() is not None:
        assert native_step.native_step(model) is not None
    model.decoder.decoder_spec = dataclasses.replace(spec, qk_norm=True)
    assert native_step.native_step(model) is None


@needs_kernels
def test_the_layout_is_what_the_python_side_provides():
    """`DecodeStep.layout()` (decode_cpu.cpp's one declaration) names the operands and sizes that
    `native_step` builds, and the kinds its products take."""
    layout = torch.classes.lamina.DecodeStep.layout()
    model = _model()
    assert sorted(native_step._layer_operands(model.decoder.layers[0])) == sorted(layout["layer"])
    assert layout["kinds"] == ["float32", "int8", "int4"]
    tensors, kinds, sizes, *_ = native_step._operands(model)
    spec = model.decoder.decoder_spec
    named = dict(zip(layout["sizes"], sizes))
    assert named == dict(hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=96, layers=2, vocab=97)
    assert tensors[0].data_ptr() == model.decoder.embed_tokens.weight.data_ptr()
    assert len(kinds) == 1 + 4 * spec.num_layers
