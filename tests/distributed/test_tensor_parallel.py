"""Tensor and expert parallelism on gloo: every decoder family, MegatronBERT and MobileBERT, and
every head, split over 2 and 4 spawned ranks gives the one-process outputs, losses, gradients, greedy tokens
(picked over the ranks' vocabulary shares) and seeded sampled tokens; errors reach every rank."""

from __future__ import annotations

import pytest

from tests.distributed.harness import ENCODER_CONFIGS, FAMILY_CONFIGS, OUTPUTS, case, causal, spawn

HEADS = {
    "gpt2": ["LMHeadModel", "Model", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
             "DoubleHeadsModel"],
    "persimmon": ["ForCausalLM", "Model", "ForSequenceClassification", "ForTokenClassification"],
}
DEFAULT_HEADS = ["ForCausalLM", "Model", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"]
ENCODER_HEADS = ["Model", "ForMaskedLM", "ForPreTraining", "ForNextSentencePrediction", "ForSequenceClassification",
                 "ForMultipleChoice", "ForTokenClassification", "ForQuestionAnswering"]
HEADS.update(megatron_bert=ENCODER_HEADS, megatron_bert_decoder=["ForCausalLM"], mobilebert=ENCODER_HEADS)
CASES = {f"{family}-{head}": case(family, head, **({"num_labels": 2} if head == "ForQuestionAnswering" else {}))
         for family in {**FAMILY_CONFIGS, **ENCODER_CONFIGS}
         for head in HEADS.get(family, DEFAULT_HEADS)}
# a wider model, whose split weights dwarf its replicated norms, for the bytes each rank holds
CASES["wide"] = case("mistral", "ForCausalLM", vocab_size=512, hidden_size=128, intermediate_size=512,
                     num_attention_heads=8, num_key_value_heads=4, head_dim=16)
CASES["three-heads"] = case("mistral", "ForCausalLM", num_attention_heads=3, num_key_value_heads=3,
                            hidden_size=24, head_dim=8)
CASES["six-heads"] = case("gpt2", "LMHeadModel", n_head=6, n_embd=48)
# lamina's tensor-parallel layout (`lamina convert --tp 2`): each rank reads its own file
CASES["layout"] = {**case("mistral", "ForCausalLM"), "layout": 2}

SPLIT = [{"key": name, "case": name} for name in CASES if name not in ("three-heads", "six-heads")]
EXPERTS = [{"key": "experts-ep2", "case": "mixtral-ForCausalLM", "ep_size": 2}]
CAUSAL = [job for job in SPLIT if causal(CASES[job["case"]]["class"]) or job["key"] == "mistral-ForSequenceClassification"]


def disagreeing(world: int) -> dict:
    return {"key": "disagree", "per_rank": ["mistral-ForCausalLM"] + ["llama-ForCausalLM"] * (world - 1)}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    jobs = SPLIT + EXPERTS + [{"key": "indivisible", "case": "three-heads"}, disagreeing(2)]
    return spawn(tmp_path_factory.mktemp("tp2"), 2, CASES, jobs)


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    cases = {name: CASES[name] for name in {job["case"] for job in CAUSAL} | {"six-heads", "wide", "layout"}}
    jobs = [job for job in CAUSAL if job["key"] != "layout"] + [{"key": "layout-mismatch", "case": "layout"},{"key": "wide", "case": "wide"}, {"key": "experts-ep2-tp2", "case": "mixtral-ForCausalLM",
                                                       "ep_size": 2}, {"key": "indivisible", "case": "six-heads"},
                     disagreeing(4)]
    return spawn(tmp_path_factory.mktemp("tp4"), 4, cases, jobs)


def check_split(reports: list[dict], key: str) -> None:
    for rank, report in enumerate(reports):
        found = report[key]
        assert "error" not in found, f"rank {rank}: {found.get('traceback')}"
        for name in OUTPUTS:
            assert found.get(name, 0.0) <= 1e-5, (rank, name, found)
        assert found["grads"] <= 1e-5, (rank, found)
        assert found["grads_compared"] == found["grads_expected"]  # every parameter got its gradient
        assert found.get("tokens_equal", True), (rank, "greedy tokens differ from one process")
        # seeded alike, every rank draws the one process's tokens (the logits every rank gathers are the same)
        assert found.get("sampled_equal", True), (rank, "sampled tokens differ from one process")


@pytest.mark.parametrize("key", [job["key"] for job in SPLIT + EXPERTS])
def test_two_ranks_match_one_process(two_ranks, key):
    check_split(two_ranks, key)


@pytest.mark.parametrize("key", [job["key"] for job in CAUSAL if job["key"] != "layout"] + ["experts-ep2-tp2"])
def test_four_ranks_match_one_process(four_ranks, key):
    """Four ranks split two key/value heads (each replicated on two ranks) and Qwen2's single one."""
    check_split(four_ranks, key)


def test_causal_lm_covers_every_family():
    families = {CASES[job["case"]]["family"] for job in CAUSAL if causal(CASES[job["case"]]["class"])}
    assert families >= set(FAMILY_CONFIGS)


@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_holds_its_share_of_the_weights(two_ranks, four_ranks, world):
    reports = two_ranks if world == 2 else four_ranks
    for report in reports:
        assert 1 / world <= report["wide"]["weight_fraction"] <= 1.03 / world


@pytest.mark.parametrize("world", [2, 4])
def test_indivisible_heads_fail_on_every_rank(two_ranks, four_ranks, world):
    reports = two_ranks if world == 2 else four_ranks
    heads = 3 if world == 2 else 6
    for report in reports:
        assert report["indivisible"]["error"] == "ConfigError"
        assert f"{world} ranks cannot split {heads} attention heads" in report["indivisible"]["message"]


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_loading_different_checkpoints_fail_on_every_rank(two_ranks, four_ranks, world):
    reports = two_ranks if world == 2 else four_ranks
    for report in reports:
        assert report["disagree"]["error"] == "CheckpointError"
        assert "the ranks disagree" in report["disagree"]["message"]


def test_a_layout_for_other_ranks_fails_on_every_rank(four_ranks):
    for report in four_ranks:
        assert report["layout-mismatch"]["error"] == "ConfigError"
        assert "split for 2 ranks; found 4" in report["layout-mismatch"]["message"]
