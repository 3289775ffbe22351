"""`lamina generate --tp 2` starts two ranks with torchrun and prints what one process prints (and
`lamina serve --tp 2` answers what one process answers); `lamina convert --tp 2` writes the layout
those ranks read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

import lamina
from lamina.cli import default_model, main
from tests.distributed.harness import free_port

pytestmark = pytest.mark.slow  # two ranks load and generate on the shared 2 cores


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory):
    """A random 4-head Mistral with SmolLM2's tokenizer (the default model's 9 heads split over no 2
    ranks), wide enough for two ranks to split its int8 layers' blocks of 32 inputs."""
    directory = tmp_path_factory.mktemp("tiny-chat")
    tokenizer = lamina.AutoTokenizer.from_pretrained(default_model())
    torch.manual_seed(0)
    config = lamina.MistralConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    lamina.MistralForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_generate_on_two_ranks_prints_the_one_process_text(tiny_with_tokenizer, capfd, quantize):
    command = ["generate", str(tiny_with_tokenizer), "Hello there", "--raw", "--max-new-tokens", "6",
               "--quantize", quantize]
    assert main(command) == 0
    one = capfd.readouterr().out
    assert main([*command, "--tp", "2"]) == 0
    assert capfd.readouterr().out == one and one.strip()


def test_convert_writes_one_file_per_rank_and_generate_reads_it(tiny_with_tokenizer, tmp_path, capfd):
    assert main(["convert", str(tiny_with_tokenizer), str(tmp_path / "tp2"), "--tp", "2"]) == 0
    index = json.loads((tmp_path / "tp2" / "tensor_parallel.json").read_text())
    assert index == {"tp_size": 2, "files": ["rank-00-of-02.safetensors", "rank-01-of-02.safetensors"]}
    capfd.readouterr()
    command = ["generate", "Hello there", "--raw", "--max-new-tokens", "6"]
    assert main([command[0], str(tiny_with_tokenizer), *command[1:]]) == 0
    one = capfd.readouterr().out
    assert main([command[0], str(tmp_path / "tp2"), *command[1:], "--tp", "2"]) == 0
    assert capfd.readouterr().out == one


def test_heads_that_do_not_divide_fail_in_one_line(capfd):
    assert main(["generate", "Hello", "--max-new-tokens", "2", "--tp", "2"]) == 1
    err = capfd.readouterr().err
    assert "lamina generate: error: tp_size: 2 ranks cannot split 9 attention heads" in err
    assert "Traceback" not in err


def _served_text(directory, *options: str) -> str:
    """The completion `lamina serve DIRECTORY OPTIONS` gives (greedy), the server stopped with SIGTERM."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "lamina.cli", "serve", str(directory), "--port", str(port),
                               *options], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health"))["status"] == "ok":
                    break
            except OSError:
                time.sleep(0.5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", headers={"Content-Type": "application/json"},
            data=json.dumps({"model": directory.name, "prompt": "Hello there", "max_tokens": 8,
                             "temperature": 0}).encode())
        return json.load(urllib.request.urlopen(request))["choices"][0]["text"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        assert "Traceback" not in server.communicate(timeout=60)[1].decode()


def test_serve_on_two_ranks_answers_as_one_process(tiny_with_tokenizer):
    one = _served_text(tiny_with_tokenizer, "--quantize", "none")
    assert _served_text(tiny_with_tokenizer, "--quantize", "none", "--tp", "2") == one and one
