"""`lamina generate/chat/serve --tp N`: the command starts its own ranks with torchrun.

Run outside a launcher, the command runs torchrun's `--standalone --nproc-per-node N -m lamina.cli
<the same arguments>` and waits for it; `torchrun --standalone --nproc-per-node N -m lamina.cli
generate … --tp N` is also the line to run by hand (add `--nnodes`/`--rdzv-endpoint` for several machines). Each rank loads its part of
the model (`tp_plan="auto"`); rank 0 alone reads the terminal and prints, and hands every line it
reads to the others so all ranks generate from the same prompt; `serve` serves HTTP on rank 0
(`distributed.serving`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def launched() -> bool:
    """Whether this process is one rank of a launch (torchrun sets RANK)."""
    return "RANK" in os.environ


def launch(argv: list[str], ranks: int) -> int:
    """Run the `lamina` command `argv` on `ranks` local ranks under torchrun; its exit status. A
    failing rank has printed its one-line error (rank 0's); torchrun's own report is left out."""
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))  # the cores shared out
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={ranks}", "-m", "lamina.cli", *argv]))
    except ChildFailedError:
        return 1
    except SignalException as stopped:  # a stopped server (SIGTERM): the ranks have drained and gone
        return 128 + stopped.sigval
    return 0


def first_rank() -> bool:
    """Rank 0 of the launch (also before the process group exists), or not launched at all."""
    return int(os.environ.get("RANK", "0")) == 0


def quiet_other_ranks() -> None:
    """Ranks after the first write nothing to the terminal: rank 0 speaks for all."""
    if not first_rank():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
        sys.stderr = sys.stdout


def shared_line(read: Callable[[], str]) -> str:
    """A line rank 0 reads (`read()`), handed to every rank."""
    if not dist.is_initialized():
        return read()
    line = [read() if first_rank() else None]
    dist.broadcast_object_list(line, src=0)
    return line[0]
