"""Tiny random models with a word-level tokenizer, and lamina's server on a free loopback port."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn

import lamina
from lamina.serving.app import ModelHost, create_app

VOCAB = 97
EOS = 2
TINY = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=128, bos_token_id=1, eos_token_id=EOS,
    pad_token_id=0,
)
FAMILIES = {
    "mistral": ("Mistral", dict(sliding_window=None)),
    "ministral": ("Ministral", dict(sliding_window=7, layer_types=["full_attention", "sliding_attention",
                                                                  "sliding_attention"])),
    "mixtral": ("Mixtral", dict(sliding_window=None, num_local_experts=4, num_experts_per_tok=2)),
}


def words(ids: list[int]) -> str:
    """The text of token ids: each token decodes to its word with a leading space; the special
    tokens (0-2) to nothing."""
    return "".join(f" w{i}" for i in ids if i > EOS)


def save_word_tokenizer(directory: Path) -> None:
    """Token i is the word `w{i}` (0-2: pad, bos, eos), decoding with a leading space so that texts
    of consecutive pieces concatenate; a chat turn is `w3 <content>`, the assistant's cue `w4`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"\u2581w{i}": i for i in range(3, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tokenizer.decoder = decoders.Replace("\u2581", " ")
    tokenizer.save(str(directory / "tokenizer.json"))
    template = "{% for m in messages %}w3 {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w4{% endif %}"
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": template}))


def tiny_model(family: str, directory: Path, **extra: Any) -> tuple[Any, Any]:
    """A random `family` causal LM from transformers, saved and loaded by lamina, with its tokenizer."""
    import transformers

    prefix, switches = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, prefix + "Config")(**{**TINY, **switches, **extra})
    getattr(transformers, prefix + "ForCausalLM")(config).eval().save_pretrained(directory)
    save_word_tokenizer(directory)
    model = getattr(lamina, prefix + "ForCausalLM").from_pretrained(directory).eval()
    return model, lamina.AutoTokenizer.from_pretrained(directory)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`create_app` under uvicorn on a thread; `url` once /health answers 200."""

    def __init__(self, name: str, model: Any, tokenizer: Any, api_key: str | None = None,
                 max_body_bytes: int = 1 << 20, **engine_options: Any) -> None:
        self.host = ModelHost(name, lambda: (model, tokenizer), engine_options)
        self.app = create_app(self.host, api_key=api_key, max_body_bytes=max_body_bytes)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.host.start()
        self.thread.start()
        wait_healthy(self.url)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.host.close()


def wait_healthy(url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


class ServeProcess:
    """`lamina serve DIRECTORY` in a child process on a free port; `url` once /health answers 200."""

    def __init__(self, directory: Path, name: str, *options: str) -> None:
        import os
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lamina", "serve", str(directory), "--port", str(self.port),
             "--served-model-name", name, *options],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> ServeProcess:
        wait_healthy(self.url, timeout=120)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def rss_kb(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}
