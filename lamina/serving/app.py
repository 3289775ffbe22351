"""`lamina serve`'s HTTP API, OpenAI-compatible, on FastAPI.

    POST /v1/chat/completions   chat template, SSE streaming, sampling options, stop, n, logprobs
    POST /v1/completions        text or token ids, echo
    POST /v1/embeddings         encoder models (MegatronBERT, MobileBERT): mean-pooled, normalized
    GET  /v1/models, /health, /metrics

The routes never touch the model: generation goes through the engine's thread, embeddings through
one worker thread. Bad requests get OpenAI's error body with the right status; a client that goes
away has its sequences cancelled. While draining (SIGTERM) new requests get 503.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ..errors import InputError
from ..generation.json_constraint import JsonConstraint, TokenTexts
from .choices import Choice, TokenLogprob
from .engine import Engine, Finished, QueueFull, SamplingParams, TokenEvent
from .metrics import Metrics
from .protocol import (
    APIError,
    Options,
    field,
    read_embedding_inputs,
    read_messages,
    read_options,
    read_prompts,
)

# seconds a waiting non-streaming request lets pass between checks that its client is still there
DISCONNECT_POLL_S = 0.5
# what a 429 tells the client to wait, in seconds
RETRY_AFTER_S = 1


class ModelHost:
    """The served model, loaded (and warmed up) on a background thread; `ready` once it can answer.

    `load()` returns `(model, tokenizer)`; a decoder causal LM gets an `Engine` built with
    `engine_options`, an encoder is served for embeddings.
    """

    def __init__(self, name: str, load: Callable[[], tuple[Any, Any]], engine_options: dict[str, Any] | None = None,
                 metrics: Metrics | None = None, engine_class: Callable[..., Engine] = Engine) -> None:
        self.name = name
        self._load = load
        self.engine_options = engine_options or {}
        self.engine_class = engine_class  # a model split over ranks: `distributed.serving.LockstepEngine`'s
        self.metrics = metrics or Metrics()
        self.model: Any = None
        self.tokenizer: Any = None
        self.engine: Engine | None = None
        self.embedder: ThreadPoolExecutor | None = None
        self.ready = threading.Event()
        self.failure: str | None = None
        self.draining = False
        self.created = int(time.time())

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._start, name="lamina-load", daemon=True)
        thread.start()
        return thread

    def _start(self) -> None:
        try:
            self.model, self.tokenizer = self._load()
            if hasattr(self.model, "generate"):
                self.engine = self.engine_class(self.model, metrics=self.metrics, **self.engine_options)
                self.engine.start()
                self._warm_up()
            else:
                self.embedder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lamina-embed")
                self.embedder.submit(embed, self.model, self.tokenizer, ["warm up"]).result()
            self.ready.set()
        except Exception as err:  # noqa: BLE001 - reported by /health and every route
            self.failure = f"{type(err).__name__}: {err}"

    def _warm_up(self) -> None:
        """One short greedy request through the engine (the kernels' first calls are slow)."""
        done = threading.Event()
        self.engine.submit([0, 1, 2, 3], SamplingParams(max_tokens=2, temperature=0),
                           lambda event: done.set() if isinstance(event, Finished) else None)
        done.wait()

    def idle(self) -> bool:
        return self.engine is None or self.engine.idle()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        if self.embedder is not None:
            self.embedder.shutdown()


def create_app(host: ModelHost, api_key: str | None = None, max_body_bytes: int = 1 << 20) -> FastAPI:
    """The FastAPI app serving `host` (module docstring); `api_key` guards every route but /health."""
    app = FastAPI(title="lamina", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(_: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[..., Any]) -> Response:
        try:
            if request.url.path != "/health":
                _authorize(request, api_key)
                _check_serving(host, request)
        except APIError as err:
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        return await call_next(request)

    @app.get("/health")
    async def health() -> JSONResponse:
        if host.failure:
            return JSONResponse({"status": "failed", "error": host.failure}, status_code=503)
        if not host.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "draining" if host.draining else "ok"})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": host.name, "object": "model", "created": host.created,
                                            "owned_by": "lamina"}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(host.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await _read_body(request, host, max_body_bytes)
        options = read_options(body, chat=True)
        messages = read_messages(body)
        tokenizer = _generation_tokenizer(host)
        if not getattr(tokenizer, "chat_template", None):
            raise APIError(400, f"model '{host.name}' has no chat template; use /v1/completions", param="messages")
        try:
            prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
        except Exception as err:  # noqa: BLE001 - a template that fails on these messages is the request's problem
            raise APIError(400, f"the chat template failed on these messages: {err}", param="messages") from err
        return await _complete(request, host, [prompt], options, chat=True, echo=False)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await _read_body(request, host, max_body_bytes)
        options = read_options(body, chat=False)
        echo = field(body, "echo", bool, "a boolean", False)
        tokenizer = _generation_tokenizer(host)
        prompts = [tokenizer(p)["input_ids"] if isinstance(p, str) else p
                   for p in read_prompts(body, host.model.config.vocab_size)]
        return await _complete(request, host, [list(p) for p in prompts], options, chat=False, echo=echo)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body = await _read_body(request, host, max_body_bytes)
        inputs = read_embedding_inputs(body)
        encoding = field(body, "encoding_format", str, "'float' or 'base64'", "float")
        if encoding not in ("float", "base64"):
            raise APIError(400, f"'encoding_format': expected 'float' or 'base64', found {encoding!r}",
                           param="encoding_format")
        if host.embedder is None:
            raise APIError(400, f"model '{host.name}' generates text; embeddings need an encoder model "
                                "(MegatronBERT, MobileBERT)", param="model")
        loop = asyncio.get_running_loop()
        try:
            vectors, tokens = await loop.run_in_executor(host.embedder, embed, host.model, host.tokenizer, inputs)
        except InputError as err:
            raise APIError(400, str(err), param="input") from err
        data = [{"object": "embedding", "index": i, "embedding": _encoded(vector, encoding)}
                for i, vector in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": host.name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    return app


def _authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    if header != f"Bearer {api_key}":
        raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")


def _check_serving(host: ModelHost, request: Request) -> None:
    if host.failure:
        raise APIError(503, f"the model failed to load: {host.failure}", kind="server_error")
    if not host.ready.is_set():
        raise APIError(503, "the model is still loading; /health says when it is ready", kind="server_error")
    if host.draining and request.method == "POST":
        raise APIError(503, "the server is shutting down", kind="server_error")


async def _read_body(request: Request, host: ModelHost, limit: int) -> dict[str, Any]:
    """The JSON body (at most `limit` bytes), an object whose `model` is the served one."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body of {declared} bytes is over the limit of {limit}", code="body_too_large")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise APIError(413, f"request body is over the limit of {limit} bytes", code="body_too_large")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise APIError(400, f"the body is not valid JSON: {err}", code="invalid_json") from err
    if not isinstance(body, dict):
        raise APIError(400, f"the body must be a JSON object, found {type(body).__name__}", code="invalid_json")
    model = field(body, "model", str, "a string", required=True)
    if model != host.name:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{host.name}'",
                       param="model", code="model_not_found")
    return body


def _generation_tokenizer(host: ModelHost) -> Any:
    if host.engine is None:
        raise APIError(400, f"model '{host.name}' is an encoder; it serves /v1/embeddings only", param="model")
    return host.tokenizer


class _Run:
    """The sequences of one request (prompts × n) and the queue their events arrive on."""

    def __init__(self, host: ModelHost, prompts: list[list[int]], options: Options,
                 vocabulary: TokenTexts | None = None) -> None:
        self.engine = host.engine
        self.queue: asyncio.Queue[tuple[int, TokenEvent | Finished]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        stop_ids = tuple(getattr(host.model.generation_config, "eos_token_ids", None) or ())
        self.prompts = prompts
        self.choices: list[Choice] = []
        self.sequences = []
        limits = []
        for prompt in prompts:
            if not prompt:
                raise APIError(400, "'prompt' has no tokens", param="prompt")
            limits.append(options.max_tokens if options.max_tokens is not None else self.engine.context - len(prompt))
            try:
                self.engine.check_fits(len(prompt), limits[-1])
            except InputError as err:
                raise APIError(400, str(err), code="context_length_exceeded") from err
        constraints = [self._constraint(vocabulary, stop_ids, options) for _ in range(len(prompts) * options.n)]
        try:
            for prompt, max_tokens in zip(prompts, limits):
                for _ in range(options.n):
                    index = len(self.choices)
                    seed = None if options.seed is None else options.seed + index
                    params = SamplingParams(max_tokens, options.temperature, options.top_p, seed, options.logprobs,
                                            stop_ids, constraints[index])
                    self.choices.append(Choice(index, host.tokenizer, options.stop, stop_ids))
                    self.sequences.append(self.engine.submit(prompt, params, self._sink(loop, index)))
        except QueueFull as err:
            self.cancel()
            raise APIError(429, f"too many requests waiting: {err}; retry later", code="rate_limit_exceeded",
                           kind="rate_limit_error", headers={"Retry-After": str(RETRY_AFTER_S)}) from err

    @staticmethod
    def _constraint(vocabulary: TokenTexts | None, stop_ids: tuple[int, ...], options: Options) -> JsonConstraint | None:
        """A choice's JSON automaton when `response_format` asks for JSON."""
        if options.json_schema is None:
            return None
        try:
            return JsonConstraint(vocabulary, stop_ids, options.json_schema)
        except InputError as err:
            raise APIError(400, f"'response_format' cannot be served with this model: {err}",
                           param="response_format", code="unsupported_value") from err

    def _sink(self, loop: asyncio.AbstractEventLoop, index: int) -> Callable[[TokenEvent | Finished], None]:
        def sink(event: TokenEvent | Finished) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

        return sink

    def cancel(self) -> None:
        for sequence in self.sequences:
            if not sequence.done:
                self.engine.cancel(sequence)

    def unfinished(self) -> bool:
        return any(choice.finish_reason is None for choice in self.choices)

    async def events(self, request: Request | None) -> AsyncIterator[tuple[Choice, str, list[TokenLogprob]]]:
        """Each choice's released text and log-probabilities as they come; a choice's last item has
        its `finish_reason` set. Cancels what is left if the client leaves (`request`: polled) or
        the consumer stops."""
        try:
            while self.unfinished():
                try:
                    index, event = await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if request is not None and await request.is_disconnected():
                        return
                    continue
                choice = self.choices[index]
                was_open = choice.finish_reason is None
                text, logprobs = choice.take(event)
                if choice.finish_reason == "stop" and not isinstance(event, Finished):
                    self.engine.cancel(self.sequences[index])  # a stop string: no more tokens wanted
                if was_open:
                    yield choice, text, logprobs
        finally:
            self.cancel()


async def _complete(request: Request, host: ModelHost, prompts: list[list[int]], options: Options, chat: bool,
                    echo: bool) -> Response:
    vocabulary = None
    if options.json_schema is not None:  # the vocabulary's texts: decoded once, off the event loop
        vocabulary = await asyncio.get_running_loop().run_in_executor(
            None, TokenTexts.of, host.tokenizer, host.model.config.vocab_size)
    run = _Run(host, prompts, options, vocabulary)
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    head = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": host.name}
    prefix = [host.tokenizer.decode(p, skip_special_tokens=False) if echo else "" for p in prompts]
    if options.stream:
        return StreamingResponse(_stream(run, head, options, chat, prefix), media_type="text/event-stream")
    texts: dict[int, list[str]] = {c.index: [] for c in run.choices}
    async for choice, text, _ in run.events(request):
        texts[choice.index].append(text)
    if run.unfinished():
        return Response(status_code=499)  # the client left; nobody reads this
    failed = next((c.error for c in run.choices if c.error), None)
    if failed:
        raise APIError(500, f"generation failed: {failed}", kind="server_error")
    choices = []
    for choice in run.choices:
        text = prefix[choice.index // options.n] + "".join(texts[choice.index])
        item: dict[str, Any] = {"index": choice.index, "finish_reason": choice.finish_reason,
                                "logprobs": _logprobs(choice.logprobs, chat) if options.logprobs is not None else None}
        if chat:
            item["message"] = {"role": "assistant", "content": text}
        else:
            item["text"] = text
        choices.append(item)
    head["object"] = "chat.completion" if chat else "text_completion"
    return JSONResponse({**head, "choices": choices, "usage": _usage(run)})


async def _stream(run: _Run, head: dict[str, Any], options: Options, chat: bool,
                  prefix: list[str]) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
    def chunk(choice: Choice, content: str | None, logprobs: list[TokenLogprob], finish: str | None,
              role: bool = False) -> str:
        item: dict[str, Any] = {"index": choice.index, "finish_reason": finish,
                                "logprobs": _logprobs(logprobs, chat) if logprobs else None}
        if chat:
            item["delta"] = ({"role": "assistant"} if role else {}) | ({} if content is None else {"content": content})
        else:
            item["text"] = content or ""
        return f"data: {json.dumps({**head, 'choices': [item]})}\n\n"

    try:
        for choice in run.choices:  # first chunk per choice: the role (chat) or the echoed prompt
            if chat:
                yield chunk(choice, "", [], None, role=True)
            elif prefix[choice.index // options.n]:
                yield chunk(choice, prefix[choice.index // options.n], [], None)
        async for choice, text, logprobs in run.events(None):
            if text or logprobs:
                yield chunk(choice, text, logprobs, None)
            if choice.finish_reason is not None:
                if choice.error:
                    error = APIError(500, f"generation failed: {choice.error}", kind="server_error")
                    yield f"data: {json.dumps(error.body())}\n\n"
                yield chunk(choice, None, [], choice.finish_reason)
        if options.include_usage:
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': _usage(run)})}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        run.cancel()


def _usage(run: _Run) -> dict[str, int]:
    prompt = sum(len(p) for p in run.prompts)
    completion = sum(choice.tokens for choice in run.choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _logprobs(entries: list[TokenLogprob], chat: bool) -> dict[str, Any]:
    """OpenAI's logprobs object: chat's `content` list, or completions' parallel lists."""
    if chat:
        def one(text: str, logprob: float) -> dict[str, Any]:
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        return {"content": [{**one(e.text, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                            for e in entries]}
    offsets, offset = [], 0
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.text)
    return {"tokens": [e.text for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [dict(e.top) for e in entries], "text_offset": offsets}


def embed(model: Any, tokenizer: Any, inputs: list[str | list[int]]) -> tuple[list[torch.Tensor], int]:
    """Mean-pooled, L2-normalized last hidden states `(hidden,)` of each input, and the token count."""
    limit = model.config.max_position_embeddings
    vectors, count = [], 0
    for item in inputs:
        ids = tokenizer(item)["input_ids"] if isinstance(item, str) else item
        if len(ids) > limit:
            raise InputError(f"an input has {len(ids)} tokens; this model takes at most {limit}")
        count += len(ids)
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids], device=model.device)).last_hidden_state[0]
        vectors.append(torch.nn.functional.normalize(hidden.float().mean(dim=0), dim=0).cpu())
    return vectors, count


def _encoded(vector: torch.Tensor, encoding: str) -> list[float] | str:
    if encoding == "base64":  # OpenAI's: little-endian float32 bytes
        return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode()
    return vector.tolist()
