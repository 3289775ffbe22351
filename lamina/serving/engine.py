"""The engine loop: one thread owns the model and decodes every running sequence together.

Each step:

    new requests ──► waiting ──admit (room in the pool)──► running
    running, one token pending   ──► one batched decode call, every row at its own position
    running, a prompt pending    ──► one chunk of one prompt (interleaved with the decode calls,
                                     so running streams never wait for a whole long prompt)
    finished / cancelled         ──► blocks back to the pool at once

The decode step is `generate`'s (`DecodeSteps.batch_step`: lamina's native step on the CPU where it
serves the model, reading the pool's blocks in place, else the model's eager `decode_step`), so a
greedy request's tokens are those of `generate` on its prompt alone. With `prefix_sharing`, a new
sequence first takes the blocks of its prompt's prefix that running sequences have written
(`BlockPool.share_prefix`).

A sequence's blocks grow one at a time as it decodes; when the pool runs dry the youngest running
sequence is preempted: its blocks go back and it waits again, to be prefilled anew from its prompt
and the tokens it has already produced (which its client has already received).

Callers talk to the engine from other threads: `submit` hands it a sequence with a `sink` that
receives `TokenEvent`s and one `Finished`, `cancel` asks it to drop one. The model is called in one
place, `Engine._run_batch`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import InputError
from ..generation.processors import TemperatureLogitsWarper, TopPLogitsWarper
from ..generation.step import decode_steps
from .kv import BatchCache, BlockPool, SequenceBlocks
from .metrics import Metrics

logger = logging.getLogger(__name__)


# the pool's size when no block count is given
DEFAULT_KV_CACHE_BYTES = 512 << 20


class QueueFull(Exception):
    """More requests are waiting than the engine accepts (`max_waiting`)."""


def _draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> list[int]:
    """One token a row of `probs (rows, vocab)`, row i from `generators[i]` (None: the global one):
    the draw `torch.multinomial(probs[i:i+1], 1, generator=generators[i])` makes, the largest
    probability over exponential noise, so a seeded request draws what it would alone; only the
    noise is made a row at a time."""
    vocab = probs.shape[1]
    noise = torch.stack([torch.empty(vocab, dtype=probs.dtype).exponential_(1, generator=g) for g in generators])
    return (probs / noise).argmax(dim=-1).tolist()


@dataclass
class SamplingParams:
    """What one sequence asks for. `temperature` 0 is greedy; `logprobs` None returns none, k ≥ 0 the
    chosen token's log-probability and the k most likely tokens'. A `constraint` (one per sequence,
    e.g. `JsonConstraint`) masks each row of logits before sampling and reads each token taken."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    constraint: Any = None


@dataclass
class TokenEvent:
    token: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class Finished:
    reason: str  # "stop" | "length" | "cancelled" | "error"
    message: str = ""


@dataclass
class Sequence:
    """A request's tokens (prompt then generated), its blocks and where its events go."""

    tokens: list[int]
    params: SamplingParams
    sink: Callable[[TokenEvent | Finished], None]
    prompt_length: int = 0
    cached: int = 0  # tokens whose keys and values are in the pool
    blocks: SequenceBlocks = field(default_factory=SequenceBlocks)
    generator: torch.Generator | None = None
    cancelled: bool = False
    done: bool = False
    arrival: float = field(default_factory=time.monotonic)
    last_token_time: float | None = None

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_length

    @property
    def pending(self) -> int:
        """Tokens the model has not seen yet: 1 while decoding, more while a prompt is prefilled."""
        return len(self.tokens) - self.cached


class Engine:
    """Continuous batching over a decoder causal LM (module docstring).

    `num_blocks` blocks of `block_size` slots per layer group (None: as many as `kv_cache_bytes`
    holds); at most `max_running` sequences in a step and `max_waiting` queued; prompts prefilled
    `prefill_chunk` tokens at a time. `prefix_sharing`: sequences share the blocks of their prompts'
    common prefixes. Off by default: a sequence that shares prefills only its prompt's tail, a product
    over fewer rows, which lamina's quantized prompt kernels compute by another path than the whole
    prompt's, so its greedy reply can part from `generate`'s at a near-tie.
    """

    def __init__(self, model: Any, num_blocks: int | None = None, block_size: int = 16, max_running: int = 64,
                 max_waiting: int = 256, prefill_chunk: int = 256, kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
                 metrics: Metrics | None = None, prefix_sharing: bool = False) -> None:
        decoder = getattr(model, "decoder", None)
        if not hasattr(model, "decode_step") or decoder is None:
            raise InputError(f"serve: expected a decoder causal LM (Mistral, Llama, GPT-2, …), found "
                             f"{type(model).__name__}")
        spec = decoder.decoder_spec
        self.model = model
        self.context = spec.max_position_embeddings
        dtype = decoder.embed_tokens.weight.dtype
        if num_blocks is None:
            per_block = 2 * spec.num_layers * block_size * spec.num_kv_heads * spec.head_dim * dtype.itemsize
            num_blocks = max(1, kv_cache_bytes // per_block)
        self.pool = BlockPool(spec.layer_windows, spec.num_kv_heads, spec.head_dim, block_size, num_blocks,
                              dtype, model.device)
        # the batched decode step, chosen once: the server's model does not change under it
        self.decode, self.step_kind = decode_steps(model).batch_step()
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.prefill_chunk = prefill_chunk
        self.prefix_sharing = prefix_sharing
        self.metrics = metrics or Metrics()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._inbox: deque[Sequence] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self.preemptions = 0
        self._thread: threading.Thread | None = None

    # -- called from other threads ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lamina-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop; sequences still held are told they were cancelled."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def waiting_count(self) -> int:
        return len(self._inbox) + len(self.waiting)

    def idle(self) -> bool:
        return not (self._inbox or self.waiting or self.running)

    def check_fits(self, prompt_length: int, max_tokens: int) -> None:
        """Raise `InputError` (saying the lengths) when a request can never run here."""
        total = prompt_length + max_tokens
        if prompt_length >= self.context or total > self.context:
            raise InputError(
                f"this model's maximum context length is {self.context} tokens; the request has "
                f"{prompt_length} prompt tokens and max_tokens {max_tokens} ({total} in all)")
        blocks = SequenceBlocks()
        needed = self.pool.blocks_needed(blocks, 0, total)
        if None in needed and needed[None] > self.pool.num_blocks:
            raise InputError(f"the request needs {needed[None]} KV blocks of {self.pool.block_size} tokens for "
                             f"{total} tokens; the server's pool has {self.pool.num_blocks}")

    def submit(self, prompt: list[int], params: SamplingParams,
               sink: Callable[[TokenEvent | Finished], None]) -> Sequence:
        """Queue a sequence; raises `QueueFull` past `max_waiting`, `InputError` if it cannot fit."""
        self.check_fits(len(prompt), params.max_tokens)
        if self.waiting_count() >= self.max_waiting:
            raise QueueFull(f"{self.waiting_count()} requests are waiting (--max-waiting {self.max_waiting})")
        generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        sequence = Sequence(list(prompt), params, sink, prompt_length=len(prompt), generator=generator)
        with self._wake:
            self._inbox.append(sequence)
            self._wake.notify()
        return sequence

    def cancel(self, sequence: Sequence) -> None:
        """Drop a sequence at the next step (its blocks go back to the pool)."""
        with self._wake:
            sequence.cancelled = True
            self._wake.notify()

    # -- the loop thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and self.idle():
                    self._wake.wait()
                if self._stopping:
                    break
            try:
                self.step()
            except Exception as err:  # noqa: BLE001 - a failed step fails its sequences, not the server
                logger.exception("engine step failed")
                for sequence in [*self.running, *self.waiting]:
                    self._finish(sequence, Finished("error", f"{type(err).__name__}: {err}"))
        for sequence in [*self.running, *self.waiting, *self._inbox]:
            self._finish(sequence, Finished("cancelled", "the server stopped"))

    def step(self) -> None:
        """One step: take new and cancelled requests, admit, decode every decoding row, prefill one chunk."""
        while self._inbox:
            self.waiting.append(self._inbox.popleft())
        for sequence in [s for s in (*self.running, *self.waiting) if s.cancelled]:
            self._finish(sequence, Finished("cancelled"))
        self._admit()
        decoding = [s for s in self.running if s.pending == 1]
        decoding = self._make_room(decoding)
        if decoding:
            tokens = torch.tensor([[s.tokens[-1]] for s in decoding])
            positions = torch.tensor([[s.cached] for s in decoding])
            self._take(decoding, self._run_batch(decoding, tokens, positions))
        prefilling = next((s for s in self.running if s.pending > 1), None)
        if prefilling is not None:
            self._prefill_chunk(prefilling)
        self.metrics.set_queue(len(self.running), self.waiting_count())
        self.metrics.set_kv(self.pool.used_blocks(), self.pool.capacity())

    def _admit(self) -> None:
        """Move waiting sequences to running while the pool holds all their pending tokens with a
        block per running sequence to spare (a preempted sequence let in sooner would only push out
        another one). A sequence starts with the blocks of its prompt's prefix that other sequences
        offer (`BlockPool.share_prefix`) and prefills from there."""
        while self.waiting and len(self.running) < self.max_running:
            sequence = self.waiting[0]
            shared = self.pool.share_prefix(sequence.blocks, sequence.tokens) if self.prefix_sharing else 0
            needed = self.pool.blocks_needed(sequence.blocks, shared, len(sequence.tokens))
            spare = {group: count + len(self.running) for group, count in needed.items()}
            if not self.pool.can_allocate(spare) and self.running:
                self.pool.release(sequence.blocks)
                return
            sequence.cached = shared
            self.running.append(self.waiting.popleft())

    def _make_room(self, decoding: list[Sequence]) -> list[Sequence]:
        """Give each decoding sequence the block its next token needs, preempting the youngest
        running sequences when the pool is dry; returns the sequences that still decode."""
        kept = []
        for sequence in decoding:
            while not sequence.done and sequence in self.running \
                    and not self.pool.extend(sequence.blocks, sequence.cached, sequence.cached + 1):
                self._preempt(self.running[-1])
            if sequence in self.running:
                kept.append(sequence)
        return kept

    def _preempt(self, sequence: Sequence) -> None:
        self.preemptions += 1
        self.pool.release(sequence.blocks)
        sequence.cached = 0
        self.running.remove(sequence)
        self.waiting.appendleft(sequence)

    def _chunk_end(self, sequence: Sequence) -> int:
        """The end of the next prefill chunk: the whole pending prompt if it fits in one chunk, else
        equal pieces of at most `prefill_chunk` (a short last piece would take another kernel path)."""
        pending = sequence.pending
        pieces = -(-pending // self.prefill_chunk)
        return sequence.cached + -(-pending // pieces)

    def _prefill_chunk(self, sequence: Sequence) -> None:
        start, end = sequence.cached, self._chunk_end(sequence)
        if not self.pool.extend(sequence.blocks, start, end):
            return  # the pool fills up; decoding rows free blocks as they finish
        tokens = torch.tensor([sequence.tokens[start:end]])
        positions = torch.arange(start, end)[None]
        logits = self._run_batch([sequence], tokens, positions)
        sequence.cached = end
        if self.prefix_sharing:
            self.pool.offer(sequence.blocks, sequence.tokens[:end])
        if sequence.pending == 0:  # the whole prompt is in: its last logits give the first token
            self._take([sequence], logits)

    def _run_batch(self, rows: list[Sequence], tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The one call into the model: `tokens (rows, new)` at `positions (rows, new)` over the
        rows' blocks (already allocated) → the logits after each row's last token `(rows, vocab)`,
        float32. The batch's rows sit at different positions. The step is `generate`'s (`step_kind`:
        the native step reads the blocks in place; it hands a prompt's chunk of several tokens to
        the model's eager `decode_step`, as `generate` runs a prompt eagerly)."""
        cache = BatchCache(self.pool, [s.blocks for s in rows], positions)
        device = self.pool.keys[0].device  # the model's (asking the model walks its parameters)
        with torch.no_grad():
            logits = self.decode(tokens.to(device), positions.to(device), positions.to(device), None, cache)
        return logits.float()

    def _take(self, rows: list[Sequence], logits: torch.Tensor) -> None:
        """Sample each row's next token, send it, and finish the rows that are done."""
        now = time.monotonic()
        chosen = self._sample(rows, logits)
        logprobs = torch.log_softmax(logits, dim=-1) if any(s.params.logprobs is not None for s in rows) else None
        for index, (sequence, token) in enumerate(zip(rows, chosen)):
            sequence.cached = len(sequence.tokens)
            sequence.tokens.append(token)
            if sequence.params.constraint is not None:
                sequence.params.constraint.advance(token)
            self.metrics.token(now - (sequence.last_token_time or sequence.arrival), first=sequence.generated == 1)
            sequence.last_token_time = now
            sequence.sink(self._event(sequence, token, logprobs[index] if logprobs is not None else None))
            if token in sequence.params.stop_token_ids:
                self._finish(sequence, Finished("stop"))
            elif sequence.generated >= sequence.params.max_tokens or len(sequence.tokens) >= self.context:
                self._finish(sequence, Finished("length"))

    @staticmethod
    def _event(sequence: Sequence, token: int, logprobs: torch.Tensor | None) -> TokenEvent:
        wanted = sequence.params.logprobs
        if wanted is None or logprobs is None:
            return TokenEvent(token)
        top = torch.topk(logprobs, wanted) if wanted else None
        pairs = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
        return TokenEvent(token, float(logprobs[token]), pairs)

    @staticmethod
    def _sample(rows: list[Sequence], logits: torch.Tensor) -> list[int]:
        """Greedy rows take the highest logit (the first of ties, as `generate`); the others are drawn
        together from `logits (rows, vocab)` with each one's temperature and top-p, as `generate`'s
        processors do, and each one's generator (`_draw`). A row's constraint (JSON output) picks its
        greedy token or masks its logits first."""
        chosen = logits.max(dim=-1).indices.tolist()
        constrained = [index for index, sequence in enumerate(rows) if sequence.params.constraint is not None]
        if constrained:
            logits = logits.clone()
        for index in constrained:
            params = rows[index].params
            if params.temperature == 0:
                chosen[index] = params.constraint.greedy(logits[index])
            else:
                logits[index] = params.constraint.mask(logits[index])
        sampled = [index for index, sequence in enumerate(rows) if sequence.params.temperature != 0]
        if not sampled:
            return chosen
        params = [rows[index].params for index in sampled]
        # the warpers broadcast a column of per-row settings as they do one number
        temperatures = torch.tensor([p.temperature for p in params], dtype=logits.dtype)[:, None]
        scores = TemperatureLogitsWarper(temperatures)(None, logits[sampled])  # (sampled, vocab)
        narrowed = [index for index, p in enumerate(params) if p.top_p < 1]
        if narrowed:
            top_p = torch.tensor([params[index].top_p for index in narrowed], dtype=logits.dtype)[:, None]
            scores[narrowed] = TopPLogitsWarper(top_p)(None, scores[narrowed])
        drawn = _draw(torch.softmax(scores, dim=-1), [rows[index].generator for index in sampled])
        for index, token in zip(sampled, drawn):
            chosen[index] = token
        return chosen

    def _finish(self, sequence: Sequence, event: Finished) -> None:
        if sequence.done:
            return
        sequence.done = True
        self.pool.release(sequence.blocks)
        if sequence in self.running:
            self.running.remove(sequence)
        elif sequence in self.waiting:
            self.waiting.remove(sequence)
        self.metrics.finished(event.reason)
        sequence.sink(event)
