"""A rank's part of a fused or stacked parameter is cut from the checkpoint's own tensors: equal to
cutting the joined tensor, and only those pages of the memory-mapped file are read."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from lamina.checkpoints.io import SafetensorsFile
from lamina.checkpoints.namemap import Concatenated, Stacked, concat
from lamina.distributed.tensor_parallel import Shard, head_split
from tests.distributed.harness import resident_kib

ROWS, WIDTH = 256, 1024  # 1 MiB per float32 tensor
# a read fault maps the file's cached pages up to 64 KiB around it (the kernel's fault-around), and
# pieces that do not start on a page boundary share a page with their neighbours
FAULT_AROUND_KIB = 64 + 4


def mapped(tmp_path, tensors: dict[str, torch.Tensor]) -> SafetensorsFile:
    save_file(tensors, tmp_path / "model.safetensors")
    return SafetensorsFile(tmp_path / "model.safetensors")


def test_fused_qkv_reads_only_this_ranks_heads(tmp_path):
    # 8 query heads and 4 kv heads of 32 rows: rank 1 of 2 holds query heads 4-7 and kv heads 2-3
    torch.manual_seed(0)
    parts = {"q": torch.randn(ROWS, WIDTH), "k": torch.randn(ROWS // 2, WIDTH), "v": torch.randn(ROWS // 2, WIDTH)}
    file = mapped(tmp_path, parts)
    q_start, q_count, kv_start, kv_count = head_split(8, 4, 2, 1)
    dim = 32
    shard = Shard(((0, ((q_start * dim, q_count * dim), ((8 + kv_start) * dim, kv_count * dim),
                        ((12 + kv_start) * dim, kv_count * dim))),))
    before = resident_kib(file._base)
    part = shard.take_merged(Concatenated(0), [file[name] for name in "qkv"])
    read = resident_kib(file._base) - before
    assert torch.equal(part, shard.take(torch.cat(list(parts.values()))))
    assert part.shape == (ROWS, WIDTH)
    total_kib = 2 * ROWS * WIDTH * 4 // 1024
    assert total_kib / 2 <= read <= total_kib / 2 + 3 * 2 * FAULT_AROUND_KIB  # half of the pages, and around 3 pieces


def test_stacked_experts_read_only_this_ranks_experts(tmp_path):
    torch.manual_seed(0)
    experts = {f"e{e}.{w}": torch.randn(ROWS // 4, WIDTH) for e in range(4) for w in ("w1", "w3")}
    file = mapped(tmp_path, experts)
    gate_up = concat("", ["w1", "w3"], [ROWS // 4] * 2)
    merge = Stacked(gate_up)
    # experts 2-3, and the second half of each of their gate and up rows
    half = ROWS // 8
    shard = Shard(((0, ((2, 2),)), (1, ((half, half), (ROWS // 4 + half, half)))))
    before = resident_kib(file._base)
    part = shard.take_merged(merge, [file[name] for name in experts])
    read = resident_kib(file._base) - before
    assert torch.equal(part, shard.take(merge([experts[name] for name in experts])))
    total_kib = 2 * ROWS * WIDTH * 4 // 1024
    assert total_kib / 4 <= read <= total_kib / 4 + 4 * 2 * FAULT_AROUND_KIB  # a quarter, and around 4 pieces
