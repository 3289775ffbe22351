"""The server under load and faults, on tiny random models: 16 concurrent clients send 64 requests
of mixed prompt and output lengths (some streaming, some cancelled half-way) twice; every completed
greedy request is `generate` on its prompt alone, none is lost or answered twice, every block goes
back to the pool and the RSS stays flat. Then: a client process killed mid-stream, prompts at the
context limit, a burst past --max-waiting, and SIGTERM during a load on `lamina serve` itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from tests.serving.servers import EOS, VOCAB, Server, ServeProcess, tiny_model, words

pytest.importorskip("transformers")
MODEL = "tiny"
CLIENTS = 16
REQUESTS = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ministral")
    model, tokenizer = tiny_model("ministral", directory)
    return directory, model, tokenizer


def _alone(model, prompt: list[int], max_tokens: int) -> str:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False)
    tokens = out[0, len(prompt):].tolist()
    return words(tokens[: tokens.index(EOS)] if EOS in tokens else tokens)


def _workload(seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    jobs = []
    for index in range(REQUESTS):
        length = int(torch.randint(1, 60, (1,), generator=generator))
        prompt = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
        jobs.append(dict(index=index, prompt=prompt, max_tokens=int(torch.randint(4, 24, (1,), generator=generator)),
                         stream=index % 3 == 0, cancel=index % 8 == 5))
    return jobs


def _send(url: str, job: dict) -> dict:
    body = {"model": MODEL, "prompt": job["prompt"], "max_tokens": job["max_tokens"], "temperature": 0,
            "stream": job["stream"] or job["cancel"], "user": str(job["index"])}
    with httpx.Client(base_url=url, timeout=120) as client:
        if not body["stream"]:
            reply = client.post("/v1/completions", json=body)
            reply.raise_for_status()
            return dict(job, id=reply.json()["id"], text=reply.json()["choices"][0]["text"])
        text, ident = "", None
        with client.stream("POST", "/v1/completions", json=body) as reply:
            for line in reply.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                ident = chunk["id"]
                text += chunk["choices"][0]["text"]
                if job["cancel"] and text.count(" ") >= 2:
                    return dict(job, id=ident, text=None)  # leaving the block closes the connection
        return dict(job, id=ident, text=text)


def _settled(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not server.host.engine.idle() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.slow
def test_load_every_greedy_request_is_generate_alone_and_nothing_leaks(tiny):
    """On `lamina serve` in a child process, so that its RSS is the server's alone."""
    directory, model, _ = tiny
    with ServeProcess(directory, MODEL, "--kv-cache-mb", "2", "--block-size", "4", "--max-running", "16",
                      "--prefill-chunk", "32") as server:
        rss, rounds = [], []
        for round_ in range(2):
            with ThreadPoolExecutor(CLIENTS) as pool:
                rounds.append(list(pool.map(lambda job: _send(server.url, job), _workload(seed=round_))))
            deadline = time.monotonic() + 30
            while server.metrics()["lamina_requests_running"] and time.monotonic() < deadline:
                time.sleep(0.05)
            metrics = server.metrics()
            assert metrics["lamina_kv_blocks_used"] == 0 and metrics["lamina_requests_waiting"] == 0
            rss.append(server.rss_kb())
        assert rss[1] - rss[0] < 10_000, rss  # KiB
        # a request the client cut may have finished on the server just before the cut reached it
        cut = sum(result["text"] is None for results in rounds for result in results)
        assert 0 < metrics['lamina_requests_finished_total{reason="cancelled"}'] <= cut, cut
    for results in rounds:
        assert sorted(r["index"] for r in results) == list(range(REQUESTS))
        assert len({r["id"] for r in results}) == REQUESTS
        for result in results:
            if result["text"] is not None:
                assert result["text"] == _alone(model, result["prompt"], result["max_tokens"]), result["index"]


def test_faults_killed_client_context_limit_and_burst(tiny):
    _, model, tokenizer = tiny
    with Server(MODEL, model, tokenizer, num_blocks=256, block_size=4, max_running=2, max_waiting=3) as server:
        # a client process killed mid-stream
        script = (f"import httpx\nwith httpx.stream('POST', '{server.url}/v1/completions', timeout=60, json="
                  f"{{'model': '{MODEL}', 'prompt': [5, 6], 'max_tokens': 100, 'stream': True}}) as r:\n"
                  "    for line in r.iter_lines():\n        print(line, flush=True)\n")
        client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().startswith("data: ")
        client.kill()
        client.wait()
        _settled(server)
        assert server.host.engine.pool.used_blocks() == 0
        assert server.host.metrics.finished_by_reason.get("cancelled") == 1

        # prompts at the context limit (128)
        url = server.url + "/v1/completions"
        full = httpx.post(url, json={"model": MODEL, "prompt": [7] * 127, "max_tokens": 1, "temperature": 0})
        assert full.status_code == 200 and full.json()["choices"][0]["finish_reason"] == "length"
        over = httpx.post(url, json={"model": MODEL, "prompt": [7] * 128, "max_tokens": 1})
        assert over.status_code == 400 and "128 prompt tokens" in over.json()["error"]["message"]

        # a burst past --max-waiting 3 with 2 running
        body = {"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 20, "temperature": 0}
        with ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(lambda _: httpx.post(url, json=body, timeout=60), range(12)))
        statuses = [r.status_code for r in replies]
        assert set(statuses) == {200, 429} and statuses.count(200) >= 5, statuses
        refused = next(r for r in replies if r.status_code == 429)
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["type"] == "rate_limit_error"
        texts = {r.json()["choices"][0]["text"] for r in replies if r.status_code == 200}
        assert texts == {_alone(model, [5, 6, 7], 20)}
        _settled(server)
        assert server.host.engine.pool.used_blocks() == 0
        assert httpx.post(url, json=body).status_code == 200


@pytest.mark.slow
def test_sigterm_drains_running_requests_and_refuses_new_ones(tiny):
    with ServeProcess(tiny[0], MODEL, "--kv-cache-mb", "4", "--max-running", "1", "--drain-timeout", "300") as server:
        url, process = server.url, server.process
        body = {"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 40, "temperature": 0}
        results: list[httpx.Response] = []
        senders = [threading.Thread(target=lambda: results.append(httpx.post(url + "/v1/completions", json=body,
                                                                             timeout=300))) for _ in range(4)]
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # every request is in the engine
            metrics = server.metrics()
            if metrics["lamina_requests_running"] + metrics["lamina_requests_waiting"] == 4:
                break
        process.send_signal(signal.SIGTERM)
        refused = httpx.post(url + "/v1/completions", json=body, timeout=30)
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
        for sender in senders:
            sender.join(timeout=300)
        assert [r.status_code for r in results] == [200] * 4
        assert all(r.json()["choices"][0]["finish_reason"] in ("stop", "length") for r in results)
        assert process.wait(timeout=300) == 0
