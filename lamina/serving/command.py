"""`lamina serve [MODEL]`: load the model on a background thread and serve it with uvicorn.

SIGTERM drains: new requests get 503, running ones finish (up to `--drain-timeout` seconds), then
the server exits. A second SIGTERM, or SIGINT, stops at once as uvicorn does.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

# encoders served for /v1/embeddings (their config.json's model_type)
EMBEDDING_MODEL_TYPES = ("megatron-bert", "mobilebert")


def serve_arguments(parser: argparse.ArgumentParser) -> None:
    from lamina.cli import _add_model_options, add_tp_option

    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help="model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--served-model-name", default=None, help="the name clients pass as 'model' (default: "
                                                                 "the model file's or directory's name)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route but /health")
    parser.add_argument("--max-running", type=int, default=64, help="sequences decoded together at most (default: 64)")
    parser.add_argument("--max-waiting", type=int, default=256,
                        help="requests queued at most; more get 429 with Retry-After (default: 256)")
    parser.add_argument("--kv-cache-mb", type=int, default=512, help="KV cache pool size in MiB (default: 512)")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default: 16)")
    parser.add_argument("--prefill-chunk", type=int, default=256,
                        help="prompt tokens prefilled per engine step at most (default: 256)")
    parser.add_argument("--prefix-sharing", action="store_true",
                        help="share the KV blocks of prompts' common prefixes (a reply may then part from "
                             "`generate`'s at a near-tie: a prompt's tail runs as a product over fewer rows)")
    parser.add_argument("--max-body-kb", type=int, default=1024, help="largest request body in KiB (default: 1024)")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds SIGTERM waits for running requests (default: 30)")
    _add_model_options(parser)
    add_tp_option(parser)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from lamina.cli import CommandError, default_model, launched_ranks

    from .app import ModelHost, create_app
    from .engine import Engine

    for name in ("max_running", "max_waiting", "kv_cache_mb", "block_size", "prefill_chunk", "max_body_kb"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')}: expected a positive integer, found {getattr(args, name)}")
    status = launched_ranks(args)
    if status is not None:
        return status
    source = Path(args.model) if args.model else default_model()
    name = args.served_model_name or (source.stem if source.is_file() else source.name)
    options = dict(block_size=args.block_size, max_running=args.max_running, max_waiting=args.max_waiting,
                   prefill_chunk=args.prefill_chunk, kv_cache_bytes=args.kv_cache_mb << 20,
                   prefix_sharing=args.prefix_sharing)
    engine_class = Engine
    if args.tp is not None:  # launched: rank 0 serves, the others follow its engine's steps
        if _model_type(source) in EMBEDDING_MODEL_TYPES:
            raise CommandError("--tp: only decoder models are served split over ranks")
        from lamina.distributed.serving import split_serving

        engine_class = split_serving(lambda: _load(source, args)[0], options)
        if engine_class is None:  # a rank after the first, released once rank 0 stopped
            return 0
    host = ModelHost(name, lambda: _load(source, args), options, engine_class=engine_class)
    host.start()
    app = create_app(host, api_key=args.api_key, max_body_bytes=args.max_body_kb << 10)
    server = DrainingServer(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=int(args.drain_timeout) + 1),
                            host, args.drain_timeout)
    print(f"lamina serve: {name} on http://{args.host}:{args.port}/v1 (GET /health says when it is ready)",
          flush=True)
    try:
        server.run()
    finally:
        host.close()
        if args.tp is not None:
            import torch.distributed

            torch.distributed.destroy_process_group()
    return 0


def _load(source: Path, args: argparse.Namespace) -> tuple[Any, Any]:
    from lamina.cli import load_model, load_tokenizer

    if _model_type(source) in EMBEDDING_MODEL_TYPES:
        from lamina.models.auto import AutoModel

        model = AutoModel.from_pretrained(source, dtype=args.dtype, device_map=args.device)
    else:
        model = load_model(source, args.dtype, args.device, args.quantize, tensor_parallel=args.tp is not None)
    return model.eval(), load_tokenizer(source)


def _model_type(source: Path) -> str | None:
    config = source / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


class DrainingServer:
    """uvicorn's server whose first SIGTERM drains (module docstring)."""

    def __init__(self, config: Any, host: Any, drain_timeout: float) -> None:
        import uvicorn

        outer = self

        class _Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                if sig == signal.SIGTERM and not host.draining:
                    host.draining = True
                    threading.Thread(target=outer._drain, daemon=True).start()
                else:
                    super().handle_exit(sig, frame)

        self.server = _Server(config)
        self.host = host
        self.drain_timeout = drain_timeout

    def _drain(self) -> None:
        deadline = time.monotonic() + self.drain_timeout
        while not self.host.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.server.should_exit = True

    def run(self) -> None:
        self.server.run()
