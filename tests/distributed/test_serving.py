"""`lamina serve --tp 2`'s engine: rank 0's `LockstepEngine` and a rank `follow`ing it give each
request the tokens one process's engine gives (greedy, and seeded sampling)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lamina
from lamina.serving.engine import Engine, Finished, SamplingParams
from tests.distributed.harness import DECODER, free_port

OPTIONS = dict(num_blocks=32, block_size=4, prefill_chunk=5)  # prompts prefilled in several chunks
REQUESTS = [([5, 9, 2, 44, 7, 1, 3, 8], SamplingParams(max_tokens=6, temperature=0)),
            ([11, 12], SamplingParams(max_tokens=5, temperature=0)),
            ([30, 31, 32, 33, 34, 35], SamplingParams(max_tokens=6, temperature=0.8, seed=3))]


def serve(engine: Engine) -> list[list[int]]:
    """The tokens each of REQUESTS gets, all submitted at once (decoded in one batch)."""
    tokens: list[list[int]] = [[] for _ in REQUESTS]
    done = [threading.Event() for _ in REQUESTS]

    def sink(index: int):
        return lambda event: done[index].set() if isinstance(event, Finished) else tokens[index].append(event.token)

    engine.start()
    for index, (prompt, params) in enumerate(REQUESTS):
        engine.submit(prompt, params, sink(index))
    for event in done:
        event.wait(120)
    engine.stop()
    return tokens


def worker(rank: int, port: int, root: str) -> None:
    from lamina.distributed.serving import LockstepEngine, follow, step_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    group = step_group()
    model = lamina.MistralForCausalLM.from_pretrained(root, tp_plan="auto")
    if rank == 0:
        torch.save(serve(LockstepEngine(model, group, **OPTIONS)), Path(root) / "split.pt")
    else:
        follow(model, group, **OPTIONS)
    dist.destroy_process_group()


def test_two_ranks_serve_the_one_process_tokens(tmp_path):
    torch.manual_seed(0)
    lamina.MistralForCausalLM(lamina.MistralConfig(**DECODER)).save_pretrained(tmp_path)
    one = serve(Engine(lamina.MistralForCausalLM.from_pretrained(tmp_path), **OPTIONS))
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    assert torch.load(tmp_path / "split.pt") == one
    assert [len(tokens) for tokens in one] == [6, 5, 6]
