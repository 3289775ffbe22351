"""lamina's C++ CPU kernels against a float64 reference of the same arithmetic (activations
rounded to int8 per block of 32, weights exactly as stored), their errors, the build cache and
the fallback to PyTorch's kernels; the AVX2-only paths are built and checked in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lamina import kernels
from lamina.quantization.linear import Int4Linear, Int8Linear, _int4pack_product, pack_nibbles, split_products_ready
from tests.decoding import assert_compiled_matches_eager, assert_native_matches_eager

OPS = kernels.ops()
needs_kernels = pytest.mark.skipif(OPS is None, reason=f"lamina kernels unavailable: {kernels.unavailable_reason()}")


def quantized_activations(x: torch.Tensor) -> torch.Tensor:
    """What the kernels multiply by: x rounded per block of 32 to int8 codes times the block's
    scale (max|x| / 127; code = x * (1 / scale), half to even, in float32), in float64."""
    blocks = x.float().view(x.shape[0], -1, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    inverse = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))
    codes = torch.round(blocks * inverse)
    return (codes.double() * scale.double()).view_as(x)


def int4_operands(out_features: int, in_features: int, group_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (out_features, in_features), generator=generator)
    groups = in_features // group_size
    scale = (torch.rand(out_features, groups, generator=generator) * 0.02).half()
    minimum = (-torch.rand(out_features, groups, generator=generator) * 0.1).half()
    weight = (codes.view(out_features, groups, group_size).double() * scale.double()[..., None]
              + minimum.double()[..., None]).view(out_features, in_features)
    return pack_nibbles(codes), scale, minimum, weight


def assert_matches(out: torch.Tensor, reference: torch.Tensor) -> None:
    assert out.dtype == torch.float32 and out.shape == reference.shape
    error = (out.double() - reference).abs().max().item()
    assert error <= 2e-6 * reference.abs().max().item(), error


# shapes: rows (decoding batches), odd block counts (a pair path and a single-block tail), output
# counts that are not a multiple of the 4 rows taken at a time, groups of one block, several and all
INT4_CASES = [(1, 576, 1536, 64), (3, 96, 10, 32), (16, 192, 7, 96), (2, 128, 33, 128), (5, 64, 4, 32),
              (2, 288, 12, 32), (1, 512, 9, 256)]


@needs_kernels
@pytest.mark.parametrize("rows,in_features,out_features,group_size", INT4_CASES)
def test_int4_linear_matches_reference(rows, in_features, out_features, group_size):
    packed, scale, minimum, weight = int4_operands(out_features, in_features, group_size)
    x = torch.randn(rows, in_features)
    out = OPS.int4_linear(x, packed, scale, minimum)
    assert_matches(out, quantized_activations(x) @ weight.T)


@needs_kernels
@pytest.mark.parametrize("rows,in_features,out_features", [(1, 576, 1536), (4, 96, 9), (16, 1536, 5), (2, 32, 3)])
def test_int8_linear_matches_reference(rows, in_features, out_features):
    generator = torch.Generator().manual_seed(1)
    weight = torch.randint(-127, 128, (out_features, in_features), generator=generator, dtype=torch.int8)
    weight_scale = torch.rand(out_features, generator=generator) * 0.01
    x = torch.randn(rows, in_features) * 3
    out = OPS.int8_linear(x, weight, weight_scale)
    assert_matches(out, quantized_activations(x) @ (weight.double() * weight_scale.double()[:, None]).T)


needs_int8_matmul = pytest.mark.skipif(OPS is None or not split_products_ready("int8_split_linear"),
                                       reason="no exact, fast int8 matrix product here (AMX or AVX-512 VNNI)")
needs_amx = pytest.mark.skipif(OPS is None or not split_products_ready("int4_split_linear"),
                               reason="no AMX-INT8 here")


def split_reference(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    return x.double() @ (weight.double() * weight_scale.double()[:, None]).T


# rows past the 16 of decoding; widths with and without a tail after the vector loop; outputs
# with a tail; a 200,000-wide output, which the kernel takes 16 rows at a time (bounded int32 sums)
@needs_int8_matmul
@pytest.mark.parametrize("rows,in_features,out_features", [(17, 576, 1536), (40, 97, 33), (3, 1536, 5),
                                                           (40, 8, 200_000)])
def test_int8_split_linear_is_as_accurate_as_float32(rows, in_features, out_features):
    """The three int8 pieces of each activation row leave an error of max|x| * 6e-8 a value, the
    float32 product's own order: both within a few 1e-7 of the float64 product's largest output."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randint(-127, 128, (out_features, in_features), generator=generator, dtype=torch.int8)
    weight_scale = torch.rand(out_features, generator=generator) * 0.01
    x = torch.randn(rows, in_features, generator=generator)
    x[:, 0] *= 60  # an outlier channel, as in real activations
    x[1] = 0  # a zero row (scale 0)
    reference = split_reference(x, weight, weight_scale)
    out = OPS.int8_split_linear(x, weight, weight_scale)
    float32 = F.linear(x, weight.float()) * weight_scale
    assert out.dtype == torch.float32 and out.shape == reference.shape and not out[1].any()
    top = reference.abs().max().item()
    error, float32_error = ((out.double() - reference).abs().max().item() / top,
                            (float32.double() - reference).abs().max().item() / top)
    assert error <= max(4 * float32_error, 1e-7), (error, float32_error)
    # the rounding to int8 pieces is not lossless: a single piece (int8 per row) would be ~1e-3 off
    assert error > 0


@needs_int8_matmul
def test_int8_split_linear_takes_non_finite_rows_to_the_float_product():
    generator = torch.Generator().manual_seed(4)
    weight = torch.randint(-127, 128, (24, 64), generator=generator, dtype=torch.int8)
    weight_scale = torch.rand(24, generator=generator)
    x = torch.randn(20, 64, generator=generator)
    x[3, 5], x[7, 9] = float("inf"), float("nan")
    out = OPS.int8_split_linear(x, weight, weight_scale)
    torch.testing.assert_close(out, F.linear(x, weight.float()) * weight_scale, equal_nan=True)
    assert out[7].isnan().all() and out[3].isinf().any()
    with pytest.raises(RuntimeError, match="x has 32 columns, the weight expects 64"):
        OPS.int8_split_linear(torch.randn(20, 32), weight, weight_scale)
    with pytest.raises(RuntimeError, match="weight_scale must be a contiguous float32 vector of 24"):
        OPS.int8_split_linear(x, weight, weight_scale[:5])


# rows and outputs that fill no whole block of 16; groups of one, two and four 32-input chunks
@needs_amx
@pytest.mark.parametrize("rows,in_features,out_features,group_size", [(17, 576, 1536, 32), (40, 96, 33, 32),
                                                                       (100, 256, 50, 64), (33, 512, 20, 128),
                                                                       (2, 64, 16, 32)])
def test_int4_split_linear_is_as_accurate_as_float32(rows, in_features, out_features, group_size):
    packed, scale, minimum, weight = int4_operands(out_features, in_features, group_size, seed=6)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(rows, in_features, generator=generator)
    x[:, 0] *= 60
    x[1] = 0
    reference = x.double() @ weight.T
    out = OPS.int4_split_linear(x, packed, scale, minimum)
    float32 = x @ weight.float().T
    assert out.dtype == torch.float32 and out.shape == reference.shape and not out[1].any()
    top = reference.abs().max().item()
    error, float32_error = ((out.double() - reference).abs().max().item() / top,
                            (float32.double() - reference).abs().max().item() / top)
    assert 0 < error <= max(4 * float32_error, 1e-7), (error, float32_error)


@needs_amx
def test_int4_split_linear_takes_non_finite_rows_to_the_float_product():
    packed, scale, minimum, weight = int4_operands(24, 64, 32, seed=8)
    x = torch.randn(20, 64)
    x[3, 5], x[7, 9] = float("inf"), float("nan")
    out = OPS.int4_split_linear(x, packed, scale, minimum)
    torch.testing.assert_close(out, x @ weight.float().T, equal_nan=True)
    with pytest.raises(RuntimeError, match="3 groups do not split 64 inputs into multiples of 32"):
        OPS.int4_split_linear(x, packed, torch.ones(24, 3).half(), torch.ones(24, 3).half())
    with pytest.raises(RuntimeError, match="x must be a 2-D float32 CPU tensor"):
        OPS.int4_split_linear(x.double(), packed, scale, minimum)


def test_int4_probe_says_no_where_the_kernel_cannot_run(monkeypatch):
    """A build without AMX (or a system refusing its tile state) raises: the probe must say no."""
    def refusing(*args):
        raise RuntimeError("int4_split_linear: this build has no AMX-INT8")

    monkeypatch.setattr(kernels, "cpu_has", lambda *flags: True)
    monkeypatch.setattr(kernels, "loaded", lambda: SimpleNamespace(int4_split_linear=refusing))
    assert split_products_ready.__wrapped__("int4_split_linear") is False


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_layers_take_float32_prompts_through_the_split_products(method, monkeypatch):
    ready = {"int8": needs_int8_matmul, "int4": needs_amx}[method]
    if ready.args[0]:
        pytest.skip(ready.kwargs["reason"])
    torch.manual_seed(5)
    layer = Int8Linear(128, 40) if method == "int8" else Int4Linear(128, 40, group_size=32)
    layer.set_weight(torch.randn(40, 128) * 0.05)
    assert layer._split is getattr(OPS, f"{method}_split_linear")
    calls = []
    real = layer._split
    monkeypatch.setattr(layer, "_split", lambda *args: calls.append(1) or real(*args))
    x = torch.randn(2, 30, 128)
    with torch.no_grad():
        out = layer(x)
    assert calls == [1]
    reference = x.double() @ layer.dequantize(torch.float64).T
    assert (out.double() - reference).abs().max() <= 1e-6 * reference.abs().max()
    # a prompt that needs gradients (the kernels have none) and bf16 prompts keep F.linear
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert calls == [1] and x.grad is not None


def test_int8_matmul_probe_refuses_saturating_sums(monkeypatch):
    """oneDNN without VNNI multiplies unsigned bytes (a + 128) by signed ones in 16-bit pair sums,
    which saturate: the probe must see it and say no."""
    def saturating(a, b):
        shifted = (a.int() + 128).view(a.shape[0], 1, -1, 2)
        pairs = (shifted * b.t().int().reshape(1, b.shape[1], -1, 2)).sum(-1).clamp(-32768, 32767)
        return pairs.sum(-1) - 128 * b.int().sum(0)

    probe = split_products_ready.__wrapped__
    monkeypatch.setattr(kernels, "cpu_has", lambda *flags: True)
    monkeypatch.setattr(torch, "_int_mm", saturating)
    assert probe("int8_split_linear") is False
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: (a.double() @ b.double()).int())
    assert probe("int8_split_linear") is True
    monkeypatch.setattr(kernels, "cpu_has", lambda *flags: False)
    assert probe("int8_split_linear") is False and probe("int4_split_linear") is False


@needs_kernels
def test_zero_and_extreme_activations():
    """A block of zeros (scale 0), a block with one huge value and a bf16 input."""
    packed, scale, minimum, weight = int4_operands(8, 128, 64)
    x = torch.randn(2, 128)
    x[0, :32] = 0
    x[1, 40] = 1e4
    assert_matches(OPS.int4_linear(x, packed, scale, minimum), quantized_activations(x) @ weight.T)
    half = x.to(torch.bfloat16)
    assert_matches(OPS.int4_linear(half, packed, scale, minimum), quantized_activations(half.float()) @ weight.T)


@needs_kernels
def test_kernel_errors_name_the_operand():
    packed, scale, minimum, _ = int4_operands(8, 64, 32)
    with pytest.raises(RuntimeError, match="x has 32 columns, the weight expects 64"):
        OPS.int4_linear(torch.randn(1, 32), packed, scale, minimum)
    with pytest.raises(RuntimeError, match="weight must be a contiguous 2-D Byte"):
        OPS.int4_linear(torch.randn(1, 64), packed.t(), scale, minimum)
    with pytest.raises(RuntimeError, match="scale has 7 rows, expected 8"):
        OPS.int4_linear(torch.randn(1, 64), packed, scale[:7], minimum)
    with pytest.raises(RuntimeError, match="3 groups do not split 64 inputs"):
        OPS.int4_linear(torch.randn(1, 64), packed, torch.ones(8, 3).half(), torch.ones(8, 3).half())
    with pytest.raises(RuntimeError, match="scale must be a contiguous 2-D Half"):
        OPS.int4_linear(torch.randn(1, 64), packed, scale.float(), minimum)
    with pytest.raises(RuntimeError, match="in_features must be a multiple of 32, got 48"):
        OPS.int8_linear(torch.randn(1, 48), torch.zeros(4, 48, dtype=torch.int8), torch.ones(4))
    with pytest.raises(RuntimeError, match="weight_scale must be a contiguous float32 vector of 4"):
        OPS.int8_linear(torch.randn(1, 64), torch.zeros(4, 64, dtype=torch.int8), torch.ones(4, dtype=torch.float64))


@needs_kernels
def test_layers_decode_through_the_kernels():
    """Quantized layers hand a few rows to lamina's kernels and agree with the reference."""
    torch.manual_seed(2)
    weight = torch.randn(48, 256) * 0.05
    int4 = Int4Linear(256, 48, group_size=64)
    int4.set_weight(weight)
    int8 = Int8Linear(256, 48)
    int8.set_weight(weight)
    assert int4._packed[0] is OPS.int4_linear and int8._packed[0] is OPS.int8_linear
    x = torch.randn(1, 3, 256)
    assert_matches(int4(x)[0].float(), quantized_activations(x[0]) @ int4.dequantize(torch.float64).T)
    assert_matches(int8(x)[0].float(), quantized_activations(x[0]) @ int8.dequantize(torch.float64).T)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=Path(__file__).parents[2])


def test_switched_off_layers_use_pytorch_kernels():
    done = run_python("""
        from lamina import kernels
        from lamina.quantization.linear import Int4Linear, _int4pack_product
        assert kernels.ops() is None and kernels.unavailable_reason() == "LAMINA_KERNELS=0"
        layer = Int4Linear(64, 16, group_size=32)
        layer.refresh_packed()
        assert layer._packed[0] is _int4pack_product
        narrow = Int4Linear(64, 8, group_size=32)  # PyTorch's packing takes multiples of 16 outputs
        narrow.refresh_packed()
        assert narrow._packed is None
        print("ok")
    """, LAMINA_KERNELS="0")
    assert done.returncode == 0 and done.stdout.strip() == "ok" and "unavailable" not in done.stderr, done.stderr


def test_a_failed_build_warns_and_falls_back(tmp_path):
    done = run_python("""
        import warnings
        from lamina import kernels
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert kernels.ops() is None
        print(kernels.unavailable_reason())
        print(caught[0].message)
    """, CXX="false", LAMINA_KERNEL_CACHE=str(tmp_path))
    assert done.returncode == 0, done.stderr
    reason, warning = done.stdout.strip().splitlines()
    assert reason.startswith("building linear_cpu.cpp, attention_cpu.cpp and decode_cpu.cpp failed")
    assert "exited with 1" in reason
    assert "PyTorch's kernels run instead" in warning
    assert [path.suffix for path in tmp_path.iterdir()] == [".lock"]  # no partial library left behind


# a stand-in compiler: counts its runs, then writes its `-o` file in two halves a second apart
FAKE_COMPILER = """#!{python}
import sys, time
with open({runs!r}, "a") as runs:
    runs.write("run\\n")
output = sys.argv[sys.argv.index("-o") + 1]
with open(output, "w") as library:
    library.write("first half ")
    library.flush()
    time.sleep(1.5)
    library.write("second half")
"""


def test_concurrent_first_builds_compile_once_and_announce(tmp_path):
    """Two processes asking for the kernels at once: one compiles (announced on stderr first), the
    other waits for it; both get the whole library."""
    compiler, runs, go = tmp_path / "fake-c++", tmp_path / "runs", tmp_path / "go"
    compiler.write_text(FAKE_COMPILER.format(python=sys.executable, runs=str(runs)))
    compiler.chmod(0o755)
    code = textwrap.dedent(f"""
        import os, time
        from lamina import kernels
        print("ready", flush=True)
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        print(open(kernels._build()).read())
    """)
    env = {**os.environ, "CXX": str(compiler), "LAMINA_KERNEL_CACHE": str(tmp_path / "cache")}
    children = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env) for _ in range(2)]  # fmt: skip
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    go.touch()
    outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    assert [out.split("\n")[0] for out, _ in outputs] == ["first half second half"] * 2
    assert runs.read_text() == "run\n"  # compiled once
    messages = sorted(err.strip() for _, err in outputs)
    assert messages[0].startswith("lamina: building lamina's CPU kernels for this machine, once"), messages
    assert messages[1].startswith("lamina: waiting for another process building lamina's CPU kernels"), messages


def native_step_matches_eager(method):
    """lamina's native decode step (decode_cpu.cpp, through this build's row kernels) gives the eager
    step's tokens and logits on a random Mistral with sliding windows, float32 or quantized."""
    from lamina.models.mistral import MistralConfig, MistralForCausalLM
    from lamina.quantization import QuantizationConfig, quantize

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=6)
    model = MistralForCausalLM(config).eval()
    if method is not None:
        quantize(model, QuantizationConfig(method=method, group_size=32))
    ids = torch.randint(1, 128, (3, 5))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    assert_native_matches_eager(model, input_ids=ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0,
                                eos_token_id=None)


@pytest.mark.slow
@needs_kernels
def test_avx2_paths_in_a_separate_build(tmp_path):
    """On an AVX-512 CPU the default build takes the VNNI and BF16 paths; build without AVX-512 and
    VNNI and check the AVX2 ones against the same reference (the native decode step included), then
    that the cached library is reused."""
    check = f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_kernels as t
        assert t.OPS is not None, t.kernels.unavailable_reason()
        for case in t.INT4_CASES:
            t.test_int4_linear_matches_reference(*case)
        t.test_int8_linear_matches_reference(3, 96, 9)
        t.test_int8_linear_matches_reference(1, 576, 40)
        t.test_zero_and_extreme_activations()
        t.test_bf16_linear_sums_in_float32(1, 576, 40)
        t.test_bf16_linear_sums_in_float32(3, 40, 5)
        t.test_f32_linear_sums_in_float32(1, 576, 40)
        t.test_f32_linear_sums_in_float32(3, 40, 5)
        for dtype in (torch.float32, torch.bfloat16):
            t.test_decode_attention_matches_softmax_attention(dtype, 6, 2, 40)
        for method in (None, "int8", "int4"):
            t.native_step_matches_eager(method)
        print("ok")
    """
    flags = "-mno-avx512f -mno-avxvnni"
    done = run_python(check, LAMINA_KERNEL_CFLAGS=flags, LAMINA_KERNEL_CACHE=str(tmp_path))
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr
    (library,) = tmp_path.glob("*.so")  # beside it, the build's lock file (kept on purpose)
    built = library.stat().st_mtime_ns
    again = run_python(check, LAMINA_KERNEL_CFLAGS=flags, LAMINA_KERNEL_CACHE=str(tmp_path))
    assert again.returncode == 0 and library.stat().st_mtime_ns == built and list(tmp_path.glob("*.so")) == [library]


@pytest.mark.slow
@needs_kernels
def test_compiled_decoding_through_the_kernels_matches_eager():
    """The compiled decode step (inductor's C++ wrapper around lamina's ops) gives the eager
    step's tokens and logits."""
    from lamina.generation.step import _compile_arguments
    from lamina.models.mistral import MistralConfig, MistralForCausalLM
    from lamina.quantization import QuantizationConfig, quantize
    from lamina.quantization.linear import uses_lamina_kernels

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2)
    model = MistralForCausalLM(config).eval()
    assert uses_lamina_kernels(model)  # float32 products of one or two rows
    assert not uses_lamina_kernels(model.to(torch.float16))
    model.float()
    quantize(model, QuantizationConfig(method="int4", group_size=32))
    assert uses_lamina_kernels(model)
    assert _compile_arguments({}, torch.device("cpu"), True)["options"]["cpp_wrapper"]
    assert "options" not in _compile_arguments({"mode": "max-autotune"}, torch.device("cpu"), True)
    assert_compiled_matches_eager(model, torch.randint(0, 128, (2, 5)), max_new_tokens=6)


@needs_kernels
@pytest.mark.parametrize("rows,in_features,out_features", [(1, 576, 1536), (2, 96, 9), (3, 40, 5), (1, 1000, 13), (8, 200, 37)])
def test_bf16_linear_sums_in_float32(rows, in_features, out_features):
    """bf16 products summed in float32: the float64 product of the same bf16 values, to float32's
    rounding (widths that are no multiple of 32 or 8 take the scalar tail)."""
    x = torch.randn(rows, in_features).bfloat16()
    weight = torch.randn(out_features, in_features).bfloat16()
    out = OPS.bf16_linear(x, weight)
    assert_matches(out, x.double() @ weight.double().T)
    with pytest.raises(RuntimeError, match="x must be a 2-D BFloat16 CPU tensor"):
        OPS.bf16_linear(x.float(), weight)


@needs_kernels
@pytest.mark.parametrize("rows,in_features,out_features", [(1, 576, 1536), (2, 96, 9), (3, 40, 5), (1, 1000, 13)])
def test_f32_linear_sums_in_float32(rows, in_features, out_features):
    """float32 products, any width (no multiple of 16 or 8: the scalar tail), inputs with a zero
    stride on their one row (as inductor passes them) taken as they are."""
    x = torch.randn(rows, in_features)
    weight = torch.randn(out_features, in_features)
    assert_matches(OPS.f32_linear(x, weight), x.double() @ weight.double().T)
    if rows == 1:
        strided = x.as_strided((1, in_features), (0, 1))
        assert torch.equal(OPS.f32_linear(strided, weight), OPS.f32_linear(x, weight))
    with pytest.raises(RuntimeError, match="x must be a 2-D float32 CPU tensor"):
        OPS.f32_linear(x.double(), weight)
    with pytest.raises(RuntimeError, match="weight must be a contiguous 2-D Float CPU tensor"):
        OPS.f32_linear(x, weight.T.contiguous().T)


@needs_kernels
@pytest.mark.parametrize("dtype,slow_half", [(torch.bfloat16, False), (torch.bfloat16, True), (torch.float32, False)])
def test_float_layers_decode_through_the_kernel(monkeypatch, dtype, slow_half):
    """`layers.Linear` in bf16 or float32 hands up to `kernel_max_rows` rows to lamina's kernel (float32
    8, bf16 2, or 16 on CPUs without bf16 units): the float32 product of the stored values,
    rounded once to the dtype (what PyTorch's matmul computes, up to summation order); more rows and
    anything with gradients keep PyTorch's product."""
    from lamina.layers import linear
    from lamina.layers.linear import KERNELS, Linear, kernel_max_rows

    monkeypatch.setitem(linear._SLOW_HALF, torch.bfloat16, slow_half)
    most = kernel_max_rows(dtype)
    assert most == (linear.SLOW_HALF_KERNEL_MAX_ROWS if slow_half else linear.KERNEL_MAX_ROWS[dtype])
    torch.manual_seed(3)
    layer = Linear(256, 48).to(dtype)
    calls = []
    counted = SimpleNamespace(**vars(OPS))
    setattr(counted, KERNELS[dtype], lambda *args: calls.append(args[0].shape) or getattr(OPS, KERNELS[dtype])(*args))
    monkeypatch.setitem(kernels._state, "ops", counted)
    tolerance = dict(rtol=2**-7, atol=1e-3) if dtype == torch.bfloat16 else dict(rtol=1e-6, atol=1e-5)
    for shape in [(1, 1, 256), (most, 256), (2, most // 2 + 1, 256)]:  # the last: too many rows, PyTorch's path
        x = torch.randn(shape).to(dtype)
        expected = (x.double() @ layer.weight.double().T + layer.bias.double()).to(dtype)
        with torch.no_grad():
            out = layer(x)
        assert out.dtype == dtype and out.shape == (*shape[:-1], 48)
        torch.testing.assert_close(out, expected, **tolerance)
    assert calls == [(1, 256), (most, 256)]
    one = torch.randn(1, 256).to(dtype)
    layer(one).float().sum().backward()  # with gradients on, PyTorch's product (the kernel has no backward)
    assert layer.weight.grad is not None and layer.weight.grad.shape == (48, 256) and len(calls) == 2
    with torch.no_grad():  # a transposed view (GPT-2's Conv1D weights): PyTorch's product
        layer.weight = torch.nn.Parameter(layer.weight.T.contiguous().T)
        torch.testing.assert_close(layer(one), F.linear(one, layer.weight, layer.bias))
    assert len(calls) == 2


MIN = torch.finfo(torch.float32).min


def attention_reference(query, key, value, mask, scale):
    """softmax(scale * q.k + mask) @ v in float64, query heads grouped over the key heads."""
    batch, heads, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.double().view(batch, kv_heads, heads // kv_heads, dim)
    scores = grouped @ key.double().transpose(2, 3) * scale + mask.double()[:, None, None, :]
    return (torch.softmax(scores, dim=-1) @ value.double()).view(batch, heads, dim)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (4, 4, 8), (6, 2, 40)])
def test_decode_attention_matches_softmax_attention(dtype, heads, kv_heads, dim):
    """One query a sequence over a cache: each row's own mask (left padding, unwritten slots and a
    window as finfo.min, a -inf), grouped heads, a head size that is no multiple of 16; a row whose
    slots are all masked averages every slot, as the softmax of equal scores does."""
    generator = torch.Generator().manual_seed(0)
    batch, slots = 3, 40
    query = torch.randn(batch, heads, dim, generator=generator)
    key = torch.randn(batch, kv_heads, slots, dim, generator=generator).to(dtype)
    value = torch.randn(batch, kv_heads, slots, dim, generator=generator).to(dtype)
    mask = torch.zeros(batch, slots)
    mask[0, 25:] = MIN  # written so far: 25 slots
    mask[1, :4] = MIN  # left padding
    mask[1, 30:] = float("-inf")
    mask[1, 10] = -3.5  # a finite bias is added, not skipped
    mask[2] = MIN
    out = OPS.decode_attention(query, key, value, mask, 0.125)
    reference = attention_reference(query, key, value, mask, 0.125)
    assert out.dtype == torch.float32 and out.shape == (batch, heads, dim)
    assert (out.double() - reference).abs().max() < 1e-5
    torch.testing.assert_close(out[2], value[2].double().mean(1).repeat_interleave(heads // kv_heads, 0).float())
    shared = OPS.decode_attention(query, key, value, mask[:1].contiguous(), 0.125)  # one mask for every row
    reference = attention_reference(query, key, value, mask[:1].expand(batch, -1), 0.125)
    assert (shared.double() - reference).abs().max() < 1e-5
    # scores hundreds apart: exponentials far below float32's range underflow to 0, the rest keep
    # the precision float32 scores of that size have (a float32 ulp of 512 is 6e-5)
    sharp = OPS.decode_attention(query * 40, key, value, mask, 1.0)
    assert torch.isfinite(sharp).all()
    assert (sharp.double() - attention_reference(query * 40, key, value, mask, 1.0)).abs().max() < 2e-4


@needs_kernels
def test_decode_attention_reads_only_the_slots_it_attends():
    """A masked slot's key and value are never read: NaN there changes nothing."""
    query, key, value = torch.randn(1, 4, 16), torch.randn(1, 2, 12, 16), torch.randn(1, 2, 12, 16)
    mask = torch.zeros(1, 12)
    mask[:, 7:] = MIN
    expected = OPS.decode_attention(query, key, value, mask, 0.25)
    key[:, :, 7:] = float("nan")
    value[:, :, 7:] = float("nan")
    assert torch.equal(OPS.decode_attention(query, key, value, mask, 0.25), expected)


@needs_kernels
def test_decode_attention_errors():
    query, cache, mask = torch.randn(1, 4, 16), torch.randn(1, 2, 12, 16), torch.zeros(1, 12)
    with pytest.raises(RuntimeError, match="query must be a contiguous .batch, heads, dim. float32"):
        OPS.decode_attention(query.double(), cache, cache, mask, 1.0)
    with pytest.raises(RuntimeError, match="key and value must be contiguous .* float32 or bfloat16"):
        OPS.decode_attention(query, cache.half(), cache.half(), mask, 1.0)
    with pytest.raises(RuntimeError, match="does not match key"):
        OPS.decode_attention(torch.randn(1, 3, 16), cache, cache, mask, 1.0)
    with pytest.raises(RuntimeError, match=r"mask must be a contiguous float32 \(1 or 1, 12\) tensor, got \[1, 11\]"):
        OPS.decode_attention(query, cache, cache, mask[:, :11].contiguous(), 1.0)
