"""The restricted unpickler: training checkpoints load, anything that names other code is refused."""

import argparse
import os
import pickle

import pytest
import torch

from lamina.checkpoints.unpickle import load_pickled, load_pickled_bytes
from lamina.errors import CheckpointError, SecurityError


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_training_checkpoint_with_namespace_and_numpy_state_loads(tmp_path):
    np = pytest.importorskip("numpy")
    state = {
        "model": {"w": torch.arange(6.0).view(2, 3)},
        "args": argparse.Namespace(num_layers=2, params_dtype=torch.float16),
        "checkpoint_version": 3.0,
        "np_rng_state": np.random.RandomState(0).get_state(),
    }
    torch.save(state, tmp_path / "ckpt.pt")
    loaded = load_pickled(tmp_path / "ckpt.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["args"].num_layers == 2 and loaded["args"].params_dtype is torch.float16
    assert (loaded["np_rng_state"][1] == state["np_rng_state"][1]).all()


def test_legacy_torch_format_loads(tmp_path):
    torch.save({"t": torch.ones(3)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(load_pickled(tmp_path / "old.pt")["t"], torch.ones(3))


@pytest.mark.parametrize("kind", ["torch_zip", "torch_legacy", "plain_pickle", "bytes"])
def test_pickle_importing_os_system_is_refused_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    payload = {"model": {"w": torch.ones(1)}, "hook": _RunsShell(marker)}
    if kind == "torch_zip" or kind == "bytes":
        torch.save(payload, path)
    elif kind == "torch_legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(_RunsShell(marker), protocol=2))
    with pytest.raises(SecurityError, match="system"):
        if kind == "bytes":
            load_pickled_bytes(path.read_bytes(), "archive.zip:evil.pt")
        else:
            load_pickled(path)
    assert not marker.exists()


def test_garbage_is_a_checkpoint_error(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00not a pickle at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_pickled(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_pickled(tmp_path / "missing.pt")
