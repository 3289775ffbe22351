"""Megatron-LM checkpoints split over pipeline stages (`mp_rank_XX_YYY`) as well as tensor ranks:
synthetic TP=2 × PP=2 and PP=2 releases of the GPT-2 and BERT test models convert to exactly what
their one-rank originals convert to."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from lamina.checkpoints.megatron_bert import convert_megatron_bert
from lamina.checkpoints.megatron_gpt2 import convert_megatron_gpt2
from lamina.errors import CheckpointError
from scripts.synthetic_megatron_bert import build_checkpoint
from tests.checkpoints.test_megatron_gpt2_convert import (
    HEADS,
    megatron_whole_tensors,
    rank_state,
    split_tensor_parallel,
    training_args,
)

transformers = pytest.importorskip("transformers")

LAYER = re.compile(r"^layers\.(\d+)\.")


def split_stages(tree: Any, stages: int, layers: int, path: str = "") -> list[Any]:
    """One rank's state as `stages` pipeline stages save it: consecutive layers renumbered from 0 in
    each, the embeddings in the first, everything else after the layers (final norm, heads) in the last."""
    if not isinstance(tree, dict):
        return [tree] * stages  # args, versions: every stage saves them
    out: list[dict] = [{} for _ in range(stages)]
    per_stage = layers // stages
    for key, value in tree.items():
        match = LAYER.match(key) if isinstance(key, str) else None
        if match:
            stage, local = divmod(int(match.group(1)), per_stage)
            out[stage][LAYER.sub(f"layers.{local}.", key)] = value
        elif isinstance(value, dict) and path != "":
            parts = split_stages(value, stages, layers, f"{path}{key}.")
            for stage, part in enumerate(parts):
                if part:
                    out[stage][key] = part
        elif path == "":
            for stage, part in enumerate(split_stages(value, stages, layers, f"{key}.")):
                out[stage][key] = part
        else:
            out[0 if "embedding" in path + key else stages - 1][key] = value
    return out


def write_release(states: list[list[dict]], folder: Path) -> Path:
    """`release/mp_rank_{tp:02d}_{pp:03d}/model_optim_rng.pt` for every tensor rank's stages."""
    (folder / "release").mkdir(parents=True)
    (folder / "latest_checkpointed_iteration.txt").write_text("release")
    for tp, stages in enumerate(states):
        for pp, state in enumerate(stages):
            directory = folder / "release" / (f"mp_rank_{tp:02d}_{pp:03d}" if len(stages) > 1 else f"mp_rank_{tp:02d}")
            directory.mkdir()
            torch.save(state, directory / "model_optim_rng.pt")
    return folder


def zipped(folder: Path) -> Path:
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted((folder / "release").rglob("model_optim_rng.pt")):
            out.write(path, str(path.relative_to(folder)))
    return archive


def same_files(one: Path, two: Path) -> None:
    first, second = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert sorted(first) == sorted(second)
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("version,tp,layout", [(1.0, 2, "dir"), (3.0, 2, "zip"), (3.0, 1, "dir")])
def test_bert_pipeline_stages_merge_to_the_single_rank_model(tmp_path, version, tp, layout):
    single = convert_megatron_bert(write_release([[s] for s in build_checkpoint(version=version)], tmp_path / "one"),
                                   tmp_path / "hf1")
    staged = [split_stages(state, 2, 2) for state in build_checkpoint(version=version, ranks=tp)]
    assert "embedding" in staged[0][0]["model"]["language_model"] and "lm_head" in staged[0][1]["model"]
    source = write_release(staged, tmp_path / "split")
    split = convert_megatron_bert(zipped(source) if layout == "zip" else source, tmp_path / "hf2")
    same_files(single, split)


@pytest.mark.parametrize("version", [0.0, 2.0])
def test_gpt2_tensor_and_pipeline_ranks_merge_to_the_single_rank_model(tmp_path, version):
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_positions=24, n_embd=32, n_layer=4, n_head=HEADS, n_inner=48, initializer_range=0.2,
    )).eval()
    whole = megatron_whole_tensors(reference, "final_layernorm")
    old_names = version == 0.0

    def states(tp: int) -> list[dict]:
        return [rank_state(t, version, training_args(reference, tp), old_names)
                for t in split_tensor_parallel(whole, tp, version, HEADS)]

    single = convert_megatron_gpt2(write_release([[s] for s in states(1)], tmp_path / "one"), tmp_path / "hf1")
    split = convert_megatron_gpt2(write_release([split_stages(s, 2, 4) for s in states(2)], tmp_path / "two"),
                                  tmp_path / "hf2")
    same_files(single, split)


def test_a_missing_stage_is_named(tmp_path):
    source = write_release([split_stages(state, 2, 2) for state in build_checkpoint(ranks=2)], tmp_path / "split")
    (source / "release" / "mp_rank_01_001" / "model_optim_rng.pt").unlink()
    (source / "release" / "mp_rank_01_001").rmdir()
    with pytest.raises(CheckpointError, match="2 tensor ranks × 2 pipeline stages expected, mp_rank_01_001 is missing"):
        convert_megatron_bert(source, tmp_path / "hf")
