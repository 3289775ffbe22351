"""Quantized layers split over spawned gloo ranks: int8 / int4 quantized as they load, or read from
a quantized lamina checkpoint, give the one-process quantized model's logits and greedy and sampled
tokens, each rank holding 1/N of the quantized bytes; a split that would cut a group is refused on
every rank.

The logits compared are a prompt's of more rows than lamina's CPU kernels take
(`PACKED_KERNEL_MAX_ROWS`): those round the activations to int8, where a last-bit difference in the
residual stream (the ranks' partial sums added in another order) can move one rounding by a step.
"""

from __future__ import annotations

import pytest

from lamina.quantization.linear import PACKED_KERNEL_MAX_ROWS
from tests.distributed.harness import case, spawn


def quantized(family: str, head: str, quantization: dict, **settings) -> dict:
    return {**case(family, head, **settings), "quantization": quantization, "prompt_length": LONG}


# wide enough that every rank's share of o_proj's and down_proj's inputs holds whole groups of 32 at 4 ranks
WIDE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=8, num_key_value_heads=4, head_dim=16)
INT8, INT4 = {"method": "int8"}, {"method": "int4", "group_size": 32}
LONG = PACKED_KERNEL_MAX_ROWS // 2 + 1  # two prompts of this length: more rows than the kernels take
CASES = {
    "int8": quantized("mistral", "ForCausalLM", INT8, **WIDE),
    "int4": quantized("mistral", "ForCausalLM", INT4, **WIDE),
    "int8-saved": {**quantized("mistral", "ForCausalLM", INT8, **WIDE), "prequantized": True},
    "int4-saved": {**quantized("mistral", "ForCausalLM", INT4, **WIDE), "prequantized": True},
    # `lamina convert --tp 2` of a quantized model: each rank reads its file
    "int4-layout": {**quantized("mistral", "ForCausalLM", INT4, **WIDE), "layout": 2},
    # a tied output layer, quantized once the load has tied it
    "int4-tied": quantized("llama", "ForCausalLM", {**INT4, "module_methods": {"lm_head": "int8"}}, **WIDE),
    "int8-encoder": quantized("megatron_bert", "ForMaskedLM", INT8, hidden_size=128, intermediate_size=256),
    # o_proj's 128 inputs in groups of 128: two ranks would cut its group
    "cut-group": quantized("mistral", "ForCausalLM", {"method": "int4", "group_size": 128}, **WIDE),
    "experts": quantized("mixtral", "ForCausalLM", INT8, **WIDE),
    # a Q4_1 GGUF read as int4 in groups of 32, as `lamina generate` reads one
    "gguf": {**quantized("llama", "ForCausalLM", INT4), "file": "model.gguf",
             "gguf_sizes": {key: WIDE[key] for key in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                       "num_key_value_heads")}},
}
# fewer key/value heads than ranks at 4: each replicated on two (frozen: no gradient sums to hook)
CASES["int8-replicated"] = quantized("qwen2", "ForCausalLM", INT8, **{**WIDE, "num_key_value_heads": 1})
SPLIT = ["int8", "int4", "int8-saved", "int4-saved", "int4-layout", "int4-tied", "int8-encoder", "gguf"]
# split whole (an encoder's embeddings and heads, and replicated key/value heads, are not; a saved
# int4 model's float16 scales load as float32, against the reference's float16 for the layout)
SHARED = ["int8", "int4", "int8-saved", "int4-saved", "int4-tied", "gguf"]
FOUR = ["int8", "int4-saved", "int8-replicated"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return spawn(tmp_path_factory.mktemp("q2"), 2, CASES, [{"key": name, "case": name} for name in CASES])


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    return spawn(tmp_path_factory.mktemp("q4"), 4, {name: CASES[name] for name in FOUR},
                 [{"key": name, "case": name} for name in FOUR])


def check(reports: list[dict], key: str, world: int) -> None:
    for rank, report in enumerate(reports):
        found = report[key]
        assert "error" not in found, f"rank {rank}: {found.get('traceback')}"
        assert found.get("logits", 0.0) <= 1e-5 and found.get("loss", 0.0) <= 1e-5, (rank, found)
        assert found.get("tokens_equal", True) and found.get("sampled_equal", True), (rank, found)
        if key in SHARED:  # the norms aside, each rank holds its share of the quantized bytes
            assert 1 / world <= found["weight_fraction"] <= 1.05 / world, (rank, found["weight_fraction"])


@pytest.mark.parametrize("key", SPLIT)
def test_two_ranks_match_the_quantized_one_process_model(two_ranks, key):
    check(two_ranks, key, 2)


@pytest.mark.parametrize("key", FOUR)
def test_four_ranks_match_the_quantized_one_process_model(four_ranks, key):
    check(four_ranks, key, 4)


def test_a_split_cutting_a_group_fails_on_every_rank(two_ranks):
    for rank, report in enumerate(two_ranks):
        found = report["cut-group"]
        assert found["error"] == "ConfigError", found
        assert "model.layers.0.self_attn.o_proj" in found["message"] and "groups of 128" in found["message"]
        assert f"rank {rank} would hold inputs [{64 * rank}, {64 * rank + 64})" in found["message"]


def test_quantized_experts_are_refused_on_every_rank(two_ranks):
    for report in two_ranks:
        assert report["experts"]["error"] == "UnsupportedError"
        assert "quantized experts are not split over ranks" in report["experts"]["message"]
