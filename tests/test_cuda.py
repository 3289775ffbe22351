"""The decoder on a CUDA device: parity with the CPU, and the compiled (CUDA-graph) decode step
giving the eager step's tokens. Skipped where no GPU is present (CI)."""

from __future__ import annotations

import pytest
import torch

import lamina
from lamina.generation.step import decode_steps

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = dict(
    vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    sliding_window=5, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
)


@pytest.fixture(scope="module")
def cpu_model():
    torch.manual_seed(0)
    return lamina.MinistralForCausalLM(lamina.MinistralConfig(**TINY)).eval()


def _batch(device):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, TINY["vocab_size"], (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    return dict(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False, eos_token_id=None,
                pad_token_id=0)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_logits_on_cuda_match_the_cpu(cpu_model, backend, tmp_path):
    cpu_model.save_pretrained(tmp_path)
    gpu = lamina.AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cuda", attn_implementation=backend)
    batch = _batch("cpu")
    expected = cpu_model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    found = gpu(batch["input_ids"].cuda(), attention_mask=batch["attention_mask"].cuda()).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(found.cpu()[real], expected[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_step_gives_the_eager_tokens(cpu_model, dtype, tmp_path):
    cpu_model.save_pretrained(tmp_path)
    gpu = lamina.AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cuda", dtype=dtype)
    batch = _batch("cuda")
    settings = dict(max_new_tokens=20, return_dict_in_generate=True, output_logits=True)
    eager = gpu.generate(**batch, **settings, disable_compile=True)
    compiled = gpu.generate(**batch, **settings, compile_config={})
    assert not decode_steps(gpu).compile_failed
    if dtype == torch.float32:
        assert torch.equal(compiled.sequences, eager.sequences)
        assert torch.equal(eager.sequences.cpu(), cpu_model.generate(**_batch("cpu"), max_new_tokens=20))
        again = gpu.generate(**batch, max_new_tokens=12, compile_config={})  # replays the same graph
        assert torch.equal(again, eager.sequences[:, :21])
        return
    # bf16: the fused kernels round differently, so a near-tie may go the other way; until the
    # first differing token the logits agree to bf16 precision, and that token was a near-tie
    for row in range(2):
        steps = zip(eager.logits, compiled.logits, eager.sequences[row, 9:], compiled.sequences[row, 9:])
        for ours, theirs, token, other in steps:
            torch.testing.assert_close(theirs[row], ours[row], atol=0.1, rtol=0.05)
            if token != other:
                top2 = ours[row].topk(2).values
                assert float(top2[0] - top2[1]) < 0.1
                break


def test_int8_step_on_cuda_gives_the_eager_tokens(cpu_model, tmp_path):
    """int8 layers on the GPU: the compiled step (coordinate descent tuning, the dequantization
    fused into the one-row products) gives the eager step's tokens, in float32."""
    cpu_model.save_pretrained(tmp_path)
    gpu = lamina.AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cuda", dtype=torch.float32,
                                                      quantization_config=lamina.QuantizationConfig(method="int8"))
    batch = _batch("cuda")
    eager = gpu.generate(**batch, max_new_tokens=12, disable_compile=True)
    compiled = gpu.generate(**batch, max_new_tokens=12, compile_config={})
    assert not decode_steps(gpu).compile_failed
    assert torch.equal(compiled, eager)


def test_flash_attention_without_the_package_says_so(cpu_model, tmp_path):
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        cpu_model.save_pretrained(tmp_path)
        with pytest.raises(lamina.UnsupportedError, match="flash-attn package"):
            lamina.AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cuda", attn_implementation="flash_attention_2")
    else:
        pytest.skip("flash-attn is installed")


@pytest.mark.parametrize("method,group_size", [("int8", None), ("int4", 32), ("int4", 64), ("nf4", 64)])
def test_quantized_layers_on_cuda(method, group_size):
    from lamina.quantization import Int4Linear, Int8Linear, NF4Linear
    from lamina.quantization.linear import int8_fused_on_cuda

    torch.manual_seed(0)
    weight = torch.randn(96, 192) * 0.05
    layer_class = {"int8": Int8Linear, "int4": Int4Linear, "nf4": NF4Linear}[method]
    layer = layer_class(192, 96, **({} if group_size is None else {"group_size": group_size}))
    layer.set_weight(weight)
    gpu = layer.to("cuda")
    assert int8_fused_on_cuda(torch.nn.Sequential(gpu)) == (method == "int8")
    if method == "int4":  # tinygemm; int8 and nf4 dequantize
        assert gpu._packed is not None and gpu._packed[1][0].device.type == "cuda"
    for rows in (1, 4, 40):  # the packed kernel (int4), then the dequantized product
        x = torch.randn(rows, 192)
        exact = x @ layer.dequantize().cpu().T
        found = gpu(x.cuda()).float().cpu()
        torch.testing.assert_close(found, exact, atol=0.01 * float(exact.abs().max()), rtol=0.01)
    # the last position of each row of a batch (a strided view), as logits_to_keep=1 hands the output layer
    hidden = torch.randn(8, 5, 192)
    exact = hidden[:, -1:] @ layer.dequantize().cpu().T
    found = gpu(hidden.cuda()[:, -1:, :]).float().cpu()
    torch.testing.assert_close(found, exact, atol=0.01 * float(exact.abs().max()), rtol=0.01)
