"""The compiled decode step: same tokens as transformers and as the eager step, when it is chosen,
and the eager fallback when compiling fails."""

from __future__ import annotations

import pytest
import torch

import lamina
from lamina import kernels
from lamina.generation import step as decoding
from lamina.generation.step import decode_steps

transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
# one model with rolling (window 5) and static layers, one with experts
FAMILIES = {
    "ministral": ("MinistralConfig", "MinistralForCausalLM", dict(
        sliding_window=5, layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(sliding_window=7, num_local_experts=4, num_experts_per_tok=2)),
}


def _pair(name, tmp_path):
    config_name, model_name, extra = FAMILIES[name]
    torch.manual_seed(0)
    reference = getattr(transformers, model_name)(getattr(transformers, config_name)(**TINY, **extra)).eval()
    reference.save_pretrained(tmp_path)
    return reference, _without_native_step(lamina.AutoModelForCausalLM.from_pretrained(tmp_path))


def _without_native_step(model):
    """`model` decoding through its `decode_step`: lamina's native step would serve these models in
    place of the compiled step this file tests (test_native_step.py tests that one)."""
    model.native_decode = False
    return model


def _batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, TINY["vocab_size"], (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    ids[0, :3] = 0
    return dict(input_ids=ids, attention_mask=mask, do_sample=False, eos_token_id=None, pad_token_id=0)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_compiled_step_gives_the_reference_tokens(name, tmp_path):
    reference, ours = _pair(name, tmp_path)
    batch = _batch()
    # 20 new tokens take the rolling layers 3-4 times round their window
    expected = reference.generate(**batch, max_new_tokens=20)
    compiled = ours.generate(**batch, max_new_tokens=20, compile_config={})
    assert torch.equal(compiled, expected)
    assert not decode_steps(ours).compile_failed
    assert torch.equal(ours.generate(**batch, max_new_tokens=20, disable_compile=True), expected)
    # a second run of another length reuses the graph and the cache (emptied first)
    shorter = ours.generate(**batch, max_new_tokens=7, compile_config={})
    assert torch.equal(shorter, expected[:, :16])
    assert len(decode_steps(ours)._compiled) == 1


@pytest.fixture()
def counted_compile(monkeypatch):
    """torch.compile replaced by a call counter around the eager function."""
    calls = []

    def fake_compile(fn, **settings):
        calls.append(settings)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _pair("ministral", tmp_path_factory.mktemp("tiny"))[1]


def test_compiling_starts_once_enough_tokens_were_asked_for(tiny, monkeypatch, counted_compile):
    monkeypatch.setattr(decoding, "AUTO_COMPILE_TOKENS", 30)
    decode_steps(tiny).forget()
    batch = _batch()
    tiny.generate(**batch, max_new_tokens=10)  # 2 × 10 tokens: under the threshold
    assert counted_compile == []
    tiny.generate(**batch, max_new_tokens=5)  # 30 in all
    # float32 decoding through lamina's kernels takes inductor's C++ wrapper; no guards on modules,
    # no size asserts on the graph's inputs
    options = {"guard_filter_fn": decoding.skip_module_guards, "size_asserts": False}
    if kernels.ops() is not None:
        options["cpp_wrapper"] = True
    assert counted_compile == [dict(fullgraph=True, dynamic=False, options=options)]
    tiny.generate(**batch, max_new_tokens=5, disable_compile=True)
    tiny.generate(**batch, max_new_tokens=5, cache_implementation="dynamic")  # shapes change every step
    assert len(counted_compile) == 1
    tiny.generate(**batch, max_new_tokens=5, compile_config={"mode": "max-autotune-no-cudagraphs"})
    assert counted_compile[-1] == dict(fullgraph=True, dynamic=False, mode="max-autotune-no-cudagraphs")


def test_a_failed_compile_falls_back_to_eager_with_a_warning(tiny, monkeypatch):
    def broken_compile(fn, **settings):
        def run(*args):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    decode_steps(tiny).forget()
    batch = _batch()
    expected = tiny.generate(**batch, max_new_tokens=6, disable_compile=True)
    with pytest.warns(RuntimeWarning, match="compiling the decode step failed .*no compiler here"):
        found = tiny.generate(**batch, max_new_tokens=6, compile_config={})
    assert torch.equal(found, expected)
    assert decode_steps(tiny).compile_failed


def test_compile_config_is_checked(tiny):
    with pytest.raises(lamina.ConfigError, match="compile_config"):
        tiny.generate(**_batch(), max_new_tokens=2, compile_config={"fullgraf": True})


def _compiled_tokens(model, batch, new_tokens):
    compiled = model.generate(**batch, max_new_tokens=new_tokens, compile_config={})
    assert not decode_steps(model).compile_failed
    return compiled


@pytest.mark.slow
def test_the_compiled_step_follows_changes_to_the_model(tmp_path):
    """The compiled step checks no guards on modules at each step (`skip_module_guards`): a model
    changed between calls (a layer swapped, train mode, another dtype) and another model of the
    same class with weights of other shapes each get a graph of their own, and the tokens of their
    eager step."""
    reference, ours = _pair("ministral", tmp_path)
    batch = _batch()

    def eager(model):
        return model.generate(**batch, max_new_tokens=8, disable_compile=True)

    assert torch.equal(_compiled_tokens(ours, batch, 8), eager(ours))
    state = decoding.module_state(ours)
    assert decoding.module_state(ours) == state

    # another layer in place of one: the module tree changed
    torch.manual_seed(5)
    layer = ours.model.layers[1].mlp.down_proj
    swapped = torch.nn.Linear(layer.in_features, layer.out_features, bias=False).eval()
    ours.model.layers[1].mlp.down_proj = swapped
    assert decoding.module_state(ours) != state
    expected = eager(ours)
    assert not torch.equal(expected, reference.generate(**batch, max_new_tokens=8))  # the change shows
    assert torch.equal(_compiled_tokens(ours, batch, 8), expected)
    # an attribute the step reads, and a plain flag
    ours.model.layers[1].input_layernorm.eps = 0.5
    assert torch.equal(_compiled_tokens(ours, batch, 8), eager(ours))
    # weights changed in place: the same tensors, which the graph holds (no recompile needed)
    before, state = _compiled_tokens(ours, batch, 8), decoding.module_state(ours)
    with torch.no_grad():
        ours.model.layers[0].self_attn.o_proj.weight.mul_(-4.0)
    assert decoding.module_state(ours) == state  # the same graph runs
    expected = eager(ours)
    assert not torch.equal(expected, before)  # the change shows
    assert torch.equal(_compiled_tokens(ours, batch, 8), expected)
    state = decoding.module_state(ours)
    ours.train()
    assert decoding.module_state(ours) != state
    assert decoding.module_state(ours.eval()) == state

    # a model of the same class and other sizes, compiled after the first: its own graphs
    config_name, model_name, extra = FAMILIES["ministral"]
    other = getattr(transformers, model_name)(getattr(transformers, config_name)(
        **{**TINY, "intermediate_size": 40}, **extra))
    other.save_pretrained(tmp_path / "other")
    other = _without_native_step(lamina.AutoModelForCausalLM.from_pretrained(tmp_path / "other"))
    assert type(other) is type(ours)
    assert torch.equal(_compiled_tokens(other, batch, 8), eager(other))
    assert torch.equal(_compiled_tokens(ours, batch, 8), eager(ours))

    # cast to another dtype: a graph of its own, and a static cache of that dtype (the kept
    # float32 one failed the bf16 prefill's cache write)
    ours.to(torch.bfloat16)
    assert torch.equal(_compiled_tokens(ours, batch, 8), eager(ours))


def test_module_state_describes_any_buffer():
    """A sparse buffer has no strides: the state names its layout instead of failing."""
    module = torch.nn.Linear(3, 3)
    module.register_buffer("pattern", torch.eye(3).to_sparse())
    state = decoding.module_state(module)
    assert decoding.module_state(module) == state
    module.pattern = torch.eye(3).to_sparse_csr()
    assert decoding.module_state(module) != state


def test_compile_arguments_for_each_device():
    """CUDA graphs on a GPU, with coordinate descent tuning where int8 layers fuse their
    dequantization into the one-row products; the CPU's guard and size-check settings; a caller's
    mode or options replace lamina's (torch.compile takes one or the other)."""
    from lamina.quantization import QuantizationConfig, quantize
    from lamina.quantization.linear import int8_fused_on_cuda

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert decoding._compile_arguments({}, cuda) == dict(fullgraph=True, dynamic=False, mode="reduce-overhead")
    fused = decoding._compile_arguments({}, cuda, fused_int8=True)
    assert "mode" not in fused
    assert fused["options"] == {"triton.cudagraphs": True, "coordinate_descent_tuning": True}
    assert fused["options"]["triton.cudagraphs"] == torch._inductor.list_mode_options("reduce-overhead")["triton.cudagraphs"]
    assert decoding._compile_arguments({}, cpu)["options"] == {
        "guard_filter_fn": decoding.skip_module_guards, "size_asserts": False}
    for device in (cuda, cpu):
        for given in ({"mode": "max-autotune"}, {"options": {"trace.enabled": False}}):
            settings = decoding._compile_arguments(given, device, True, True)
            assert settings == dict(fullgraph=True, dynamic=False, **given)

    model = lamina.MistralForCausalLM(lamina.MistralConfig(**TINY)).eval()
    quantize(model, QuantizationConfig(method="int8"))
    assert not int8_fused_on_cuda(model)  # on the CPU lamina's int8 kernel runs (tests/test_cuda.py: the GPU)
