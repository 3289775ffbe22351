"""Megatron checkpoint reading: every layout, QKV row orders, tensor-parallel merging."""

import argparse
import zipfile

import pytest
import torch

from lamina.checkpoints.megatron import (
    load_megatron_checkpoint,
    merge_tensor_parallel,
    qkv_from_standard,
    qkv_to_standard,
)
from lamina.errors import CheckpointError
from tests.checkpoints.test_megatron_gpt2_convert import split_tensor_parallel

HEADS, HEAD_DIM, HIDDEN = 4, 3, 12


@pytest.mark.parametrize("version", [0.0, 1.0, 2.0, 3.0])
def test_qkv_orders_round_trip_and_match_the_documented_layouts(version):
    standard = torch.randn(3 * HIDDEN, HIDDEN)
    stored = qkv_from_standard(standard, version, HEADS)
    assert torch.equal(qkv_to_standard(stored, version, HEADS), standard)
    blocks = standard.view(3, HEADS, HEAD_DIM, HIDDEN)  # [which, head, channel]
    if version == 0.0:
        expected = blocks
    elif version == 1.0:
        expected = blocks.permute(1, 2, 0, 3)  # [head, channel, which]
    else:
        expected = blocks.permute(1, 0, 2, 3)  # [head, which, channel]
    assert torch.equal(stored, expected.reshape(3 * HIDDEN, HIDDEN))
    bias = torch.randn(3 * HIDDEN)
    assert torch.equal(qkv_to_standard(qkv_from_standard(bias, version, HEADS), version, HEADS), bias)


def _split(whole, tp, version):
    return split_tensor_parallel(whole, tp, version, HEADS)


def _whole():
    g = torch.Generator().manual_seed(0)
    names = {
        "encoder.layers.0.self_attention.query_key_value.weight": (3 * HIDDEN, HIDDEN),
        "encoder.layers.0.self_attention.query_key_value.bias": (3 * HIDDEN,),
        "encoder.layers.0.self_attention.dense.weight": (HIDDEN, HIDDEN),
        "encoder.layers.0.self_attention.dense.bias": (HIDDEN,),
        "encoder.layers.0.mlp.dense_h_to_4h.weight": (4 * HIDDEN, HIDDEN),
        "encoder.layers.0.mlp.dense_h_to_4h.bias": (4 * HIDDEN,),
        "encoder.layers.0.mlp.dense_4h_to_h.weight": (HIDDEN, 4 * HIDDEN),
        "embedding.word_embeddings.weight": (16, HIDDEN),
    }
    return {n: torch.randn(s, generator=g) for n, s in names.items()}


@pytest.mark.parametrize("version", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("tp", [1, 2])
def test_merge_restores_whole_tensors(version, tp):
    whole = _whole()
    merged = merge_tensor_parallel(_split(whole, tp, version), HEADS, version)
    assert merged.keys() == whole.keys()
    for name in whole:
        assert torch.equal(merged[name], whole[name]), name


def _state(tensors, version):
    """The nested dict a Megatron rank saves."""
    language_model = {"embedding": {"word_embeddings": {"weight": tensors["embedding.word_embeddings.weight"]}},
                      "encoder": {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}}
    return {"model": {"language_model": language_model}, "checkpoint_version": version,
            "args": argparse.Namespace(num_attention_heads=HEADS)}


@pytest.mark.parametrize("layout", ["file", "dir", "release", "tracker_iter", "zip"])
def test_every_layout_loads_and_merges(tmp_path, layout):
    whole, version = _whole(), 2.0
    ranks = [_state(r, version) for r in _split(whole, 2, version)]
    single = _state(_split(whole, 1, version)[0], version)
    if layout == "file":
        torch.save(single, tmp_path / "x.pt")
        target = tmp_path / "x.pt"
    elif layout == "dir":
        torch.save(single, tmp_path / "model_optim_rng.pt")
        target = tmp_path
    else:
        folder = "iter_0000020" if layout == "tracker_iter" else "release"
        for r, state in enumerate(ranks):
            (tmp_path / folder / f"mp_rank_{r:02d}").mkdir(parents=True)
            torch.save(state, tmp_path / folder / f"mp_rank_{r:02d}" / "model_optim_rng.pt")
        if layout == "tracker_iter":
            (tmp_path / "latest_checkpointed_iteration.txt").write_text("20\n")
        target = tmp_path
        if layout == "zip":
            target = tmp_path / "megatron.zip"
            with zipfile.ZipFile(target, "w") as archive:
                for r in range(2):
                    name = f"release/mp_rank_{r:02d}/model_optim_rng.pt"
                    archive.write(tmp_path / name, name)
    ckpt = load_megatron_checkpoint(target)
    assert ckpt.checkpoint_version == version and ckpt.arg("num_attention_heads") == HEADS
    merged = ckpt.merged_tensors(HEADS)
    for name, tensor in whole.items():
        assert torch.equal(merged["language_model." + name], tensor), name


def test_bad_layouts_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no model_optim_rng.pt"):
        load_megatron_checkpoint(tmp_path)
    (tmp_path / "release" / "mp_rank_00_001").mkdir(parents=True)
    torch.save({"model": {}}, tmp_path / "release" / "mp_rank_00_001" / "model_optim_rng.pt")
    with pytest.raises(CheckpointError, match="1 tensor ranks × 2 pipeline stages expected, mp_rank_00_000 is missing"):
        load_megatron_checkpoint(tmp_path)
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("banana")
    with pytest.raises(CheckpointError, match="banana"):
        load_megatron_checkpoint(tmp_path)
