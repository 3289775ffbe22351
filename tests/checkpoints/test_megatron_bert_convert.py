"""The Megatron BERT converter on synthetic checkpoints: identical to transformers 4.46.3's
conversion script (recorded fixtures), every layout, checkpoint version and tensor-parallel
merge, sizes read from the checkpoint, and the result loads in transformers 5 and lamina alike."""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lamina
from lamina.checkpoints.megatron_bert import convert_megatron_bert
from lamina.errors import CheckpointError, SecurityError
from scripts.synthetic_megatron_bert import HEADS, PADDED_VOCAB, build_checkpoint

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "megatron_bert"


def write_ranks(states: list[dict], folder: Path) -> Path:
    """Megatron's training layout: <folder>/latest_checkpointed_iteration.txt + release/mp_rank_XX/."""
    (folder / "latest_checkpointed_iteration.txt").parent.mkdir(parents=True, exist_ok=True)
    (folder / "latest_checkpointed_iteration.txt").write_text("release")
    for rank, state in enumerate(states):
        rank_dir = folder / "release" / f"mp_rank_{rank:02d}"
        rank_dir.mkdir(parents=True)
        torch.save(state, rank_dir / "model_optim_rng.pt")
    return folder


def converted(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


@pytest.mark.parametrize("version", [0.0, 1.0, 3.0])
def test_same_as_transformers_4_conversion_script(version, tmp_path):
    source = tmp_path / "checkpoint"
    source.mkdir()
    torch.save(build_checkpoint(version=version)[0], source / "model_optim_rng.pt")
    out = convert_megatron_bert(source, tmp_path / "hf")
    expected = load_file(FIXTURES / f"convert_v{version:g}" / "converted.safetensors")
    found = converted(out)
    # lamina leaves out the decoder weight that is tied to the word embeddings; the script writes both
    assert torch.equal(expected.pop("cls.predictions.decoder.weight"), found["bert.embeddings.word_embeddings.weight"])
    assert sorted(found) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(found[name], tensor), name
    expected_config = json.loads((FIXTURES / f"convert_v{version:g}" / "config.json").read_text())
    config = json.loads((out / "config.json").read_text())
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "type_vocab_size", "tokenizer_type", "layer_norm_eps", "hidden_act"):
        assert config[key] == expected_config[key], key
    assert config["architectures"] == ["MegatronBertForPreTraining"]


@pytest.mark.parametrize("version", [1.0, 3.0])
def test_tensor_parallel_ranks_merge_to_the_single_rank_model(version, tmp_path):
    single = convert_megatron_bert(write_ranks(build_checkpoint(version=version), tmp_path / "one"),
                                              tmp_path / "hf1")
    split = convert_megatron_bert(write_ranks(build_checkpoint(version=version, ranks=2), tmp_path / "two"),
                                             tmp_path / "hf2")
    one, two = converted(single), converted(split)
    assert sorted(one) == sorted(two)
    for name in one:
        assert torch.equal(one[name], two[name]), name


def test_ngc_zip_and_sizes_without_args(tmp_path):
    """The NGC archive layout; without training args the sizes come from the tensors' shapes."""
    archive = tmp_path / "megatron_bert_345m_v0_1_uncased.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        with zf.open("release/mp_rank_00/model_optim_rng.pt", "w") as handle:
            torch.save(build_checkpoint(version=0.0, with_args=False)[0], handle)
    out = convert_megatron_bert(archive, tmp_path / "hf", num_heads=HEADS)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == PADDED_VOCAB and config["num_attention_heads"] == HEADS
    reference = load_file(FIXTURES / "convert_v0" / "converted.safetensors")
    found = converted(out)
    assert all(torch.equal(found[name], reference[name]) for name in found)
    half = converted(convert_megatron_bert(archive, tmp_path / "hf16", num_heads=HEADS, dtype="float16"))
    assert all(t.dtype == torch.float16 and torch.equal(t, found[name].half()) for name, t in half.items())


def test_converted_directory_runs_the_same_in_transformers_and_lamina(tmp_path):
    transformers = pytest.importorskip("transformers")
    out = convert_megatron_bert(write_ranks(build_checkpoint(version=3.0, ranks=2), tmp_path / "ckpt"),
                                           tmp_path / "hf")
    reference = transformers.MegatronBertForPreTraining.from_pretrained(out).eval()
    ours = lamina.AutoModelForPreTraining.from_pretrained(out)
    ids = torch.randint(0, PADDED_VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    types = (torch.arange(9) >= 5).long().expand(2, 9)
    expected, found = reference(input_ids=ids, token_type_ids=types), ours(input_ids=ids, token_type_ids=types)
    assert (expected.prediction_logits - found.prediction_logits).abs().max() <= 1e-4
    assert (expected.seq_relationship_logits - found.seq_relationship_logits).abs().max() <= 1e-4


def test_checkpoint_without_next_sentence_head_becomes_a_masked_lm(tmp_path):
    source = tmp_path / "model_optim_rng.pt"
    torch.save(build_checkpoint(binary_head=False)[0], source)
    out = convert_megatron_bert(source, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["MegatronBertForMaskedLM"]
    assert not any(name.startswith(("bert.pooler", "cls.seq_relationship")) for name in converted(out))
    assert isinstance(lamina.AutoModelForMaskedLM.from_pretrained(out), lamina.MegatronBertForMaskedLM)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_refuses_pickles_that_run_code(tmp_path):
    state = build_checkpoint()[0]
    state["extra"] = _Payload()
    source = tmp_path / "model_optim_rng.pt"
    torch.save(state, source)
    with pytest.raises(SecurityError, match="system"):
        convert_megatron_bert(source, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_inconsistent_checkpoints_are_named(tmp_path):
    state = build_checkpoint()[0]
    state["args"] = argparse.Namespace(**{**vars(state["args"]), "padded_vocab_size": 48})
    torch.save(state, tmp_path / "model_optim_rng.pt")
    with pytest.raises(CheckpointError, match="vocab_size=48"):
        convert_megatron_bert(tmp_path / "model_optim_rng.pt", tmp_path / "hf")
    del state["model"]["lm_head"]
    torch.save(state, tmp_path / "model_optim_rng.pt")
    with pytest.raises(CheckpointError, match="lm_head.bias"):
        convert_megatron_bert(tmp_path / "model_optim_rng.pt", tmp_path / "hf")


def test_lamina_command_converts(tmp_path, capsys):
    from lamina import cli

    write_ranks(build_checkpoint(version=1.0, ranks=2), tmp_path / "ckpt")
    status = cli.main(["convert-megatron-bert", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--dtype", "bfloat16"])
    assert status == 0 and f"MegatronBertForPreTraining (vocabulary {PADDED_VOCAB})" in capsys.readouterr().out
    assert all(t.dtype == torch.bfloat16 for t in converted(tmp_path / "hf").values())
    assert cli.main(["convert-megatron-bert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 1
    assert "no such file" in capsys.readouterr().err
