"""Adept's Persimmon release → HF Persimmon: synthetic checkpoints in Adept's Megatron layout (one
and two tensor-parallel ranks) convert to directories transformers and lamina load with the
original logits; the tokenizer is copied with the chat template; transformers 4.46.3's script
gives the same tensors (recorded fixture)."""

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lamina.checkpoints.adept import convert_adept_persimmon
from lamina.checkpoints.megatron import qkv_to_standard
from lamina.errors import CheckpointError, SecurityError
from lamina.models.persimmon import PersimmonForCausalLM
from tests.checkpoints.test_megatron_gpt2_convert import FIXTURES, fixture_cases, split_tensor_parallel

transformers = pytest.importorskip("transformers")

HEADS, VOCAB = 4, 120
SPM = Path(__file__).parent.parent / "fixtures" / "mluke" / "sentencepiece.bpe.model"


def adept_ranks(reference, tp, with_args):
    """The per-rank dicts Adept's Megatron fork saves for an HF Persimmon model's weights."""
    whole = {}
    for name, tensor in reference.state_dict().items():
        if name == "model.embed_tokens.weight":
            whole["language_model.embedding.word_embeddings.weight"] = tensor
        elif name == "lm_head.weight":
            whole["word_embeddings_for_head.weight"] = tensor
        else:
            local = name.removeprefix("model.").replace(".self_attn.", ".self_attention.")
            if "query_key_value" in local:  # the split below expects [q; k; v] rows
                tensor = qkv_to_standard(tensor, 2.0, HEADS)
            whole["language_model.encoder." + local] = tensor
    states = []
    for tensors in split_tensor_parallel(whole, tp, 2.0, HEADS):
        encoder = {k.removeprefix("language_model.encoder."): v for k, v in tensors.items()
                   if k.startswith("language_model.encoder.")}
        encoder["layers.0.self_attention.rotary_emb.inv_freq"] = torch.ones(4)
        model = {
            "language_model": {"embedding": {"word_embeddings": {
                "weight": tensors["language_model.embedding.word_embeddings.weight"]}}, "encoder": encoder},
            "word_embeddings_for_head": {"weight": tensors["word_embeddings_for_head.weight"]},
        }
        state = {"model": model, "checkpoint_version": 3.0}
        if with_args:
            state["args"] = argparse.Namespace(num_attention_heads=HEADS, seq_length=64, layernorm_epsilon=1e-5)
        states.append(state)
    return states


def tiny_reference(**overrides):
    settings = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=HEADS, max_position_embeddings=64, initializer_range=0.2,
                    rope_theta=25000.0)
    settings.update(overrides)
    torch.manual_seed(0)
    return transformers.PersimmonForCausalLM(transformers.PersimmonConfig(**settings)).eval()


@pytest.mark.parametrize("tp,with_args,qk_layernorm", [(1, True, True), (2, False, True), (2, True, False)])
def test_synthetic_release_converts_to_the_original_model(tmp_path, tp, with_args, qk_layernorm):
    reference = tiny_reference(qk_layernorm=qk_layernorm)
    states = adept_ranks(reference, tp, with_args)
    release = tmp_path / "8b_chat_model_release"
    for r, state in enumerate(states):
        (release / "iter_0001000" / f"mp_rank_{r:02d}").mkdir(parents=True)
        torch.save(state, release / "iter_0001000" / f"mp_rank_{r:02d}" / "model_optim_rng.pt")
    shutil.copyfile(SPM, release / "adept_vocab.model")
    src = release if tp == 2 else release / "iter_0001000" / "mp_rank_00" / "model_optim_rng.pt"
    dst = convert_adept_persimmon(src, tmp_path / "hf", num_heads=None if with_args or qk_layernorm else HEADS)

    config = json.loads((dst / "config.json").read_text())
    assert (config["num_attention_heads"], config["qk_layernorm"], config["vocab_size"]) == (HEADS, qk_layernorm, VOCAB)
    theirs = transformers.PersimmonForCausalLM.from_pretrained(dst).eval()
    mine = PersimmonForCausalLM.from_pretrained(dst)
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(ids).logits
        assert (theirs(ids).logits - expected).abs().max() <= 1e-4
        assert (mine(ids).logits - expected).abs().max() <= 1e-4

    assert (dst / "tokenizer.model").read_bytes() == SPM.read_bytes()
    tokenizer = transformers.AutoTokenizer.from_pretrained(dst)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "human: hello\n\nadept:"


def test_missing_head_count_and_foreign_keys_are_named(tmp_path):
    reference = tiny_reference(qk_layernorm=False)
    state = adept_ranks(reference, 1, with_args=False)[0]
    torch.save(state, tmp_path / "model_optim_rng.pt")
    with pytest.raises(CheckpointError, match="num_heads"):
        convert_adept_persimmon(tmp_path / "model_optim_rng.pt", tmp_path / "out")
    state["model"]["optimizer_leftover"] = {"weight": torch.ones(1)}
    torch.save(state, tmp_path / "model_optim_rng.pt")
    with pytest.raises(CheckpointError, match="optimizer_leftover"):
        convert_adept_persimmon(tmp_path / "model_optim_rng.pt", tmp_path / "out", num_heads=HEADS)


def test_a_release_that_runs_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    torch.save({"model": {}, "args": Payload()}, tmp_path / "model_optim_rng.pt")
    with pytest.raises(SecurityError, match="rmtree"):
        convert_adept_persimmon(tmp_path, tmp_path / "out")
    assert (tmp_path / "victim").is_dir()


@pytest.mark.parametrize("case", fixture_cases("adept_persimmon"), ids=lambda case: case["name"])
def test_same_output_as_the_transformers_4_conversion_script(tmp_path, case):
    dst = convert_adept_persimmon(FIXTURES / case["input"], tmp_path / "hf", **case["lamina_kwargs"])
    ours = load_file(dst / "model.safetensors")
    theirs = load_file(FIXTURES / case["reference"])
    assert theirs.keys() == ours.keys()
    for key, tensor in theirs.items():
        assert tensor.dtype == ours[key].dtype and torch.equal(tensor, ours[key]), key


def test_lamina_command_converts(tmp_path, capsys):
    from lamina import cli

    reference = tiny_reference()
    torch.save(adept_ranks(reference, 1, with_args=True)[0], tmp_path / "model_optim_rng.pt")
    status = cli.main(["convert-adept-persimmon", str(tmp_path / "model_optim_rng.pt"), str(tmp_path / "hf"),
                       "--tokenizer-model", str(SPM), "--partial-rotary-factor", "0.25", "--rope-theta", "100"])
    assert status == 0 and "PersimmonForCausalLM" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["partial_rotary_factor"], config["rope_theta"]) == (0.25, 100.0)
    assert (tmp_path / "hf" / "tokenizer.model").is_file()
