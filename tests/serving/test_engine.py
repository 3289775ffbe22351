"""The block pool and the continuous-batching engine, without HTTP: greedy tokens equal `generate`
on each prompt alone (tiny random Mistral, Ministral with sliding layers, Mixtral), rows at different
positions in one call equal each row alone, sliding layers keep only their window's blocks, and
every block goes back to the pool (finished, cancelled, preempted)."""

from __future__ import annotations

import queue

import pytest
import torch

from lamina.generation.step import decode_steps
from lamina.generation.processors import TemperatureLogitsWarper, TopPLogitsWarper
from lamina.serving.engine import Engine, Finished, QueueFull, SamplingParams, Sequence
from lamina.serving.kv import BatchCache, BlockPool, SequenceBlocks
from tests.serving.servers import EOS, FAMILIES, VOCAB, tiny_model

pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request, tmp_path_factory):
    return tiny_model(request.param, tmp_path_factory.mktemp(request.param))[0]


def _prompts(count: int, longest: int, seed: int = 3) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest, (count,), generator=generator)
    return [torch.randint(3, VOCAB, (int(n),), generator=generator).tolist() for n in lengths]


def _collect(events: queue.Queue) -> tuple[list[int], str]:
    tokens = []
    while True:
        event = events.get(timeout=120)
        if isinstance(event, Finished):
            return tokens, event.reason
        tokens.append(event.token)


def _alone(model, prompt: list[int], max_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False, eos_token_id=EOS)
    return out[0, len(prompt):].tolist()


def _run(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> list[tuple[list[int], str]]:
    inboxes = []
    for prompt in prompts:
        inboxes.append(queue.Queue())
        engine.submit(prompt, params, inboxes[-1].put)
    return [_collect(inbox) for inbox in inboxes]


def test_greedy_tokens_equal_generate_alone(model):
    """16 prompts of 1-70 tokens at once, and 4 more that start as the longest one does (sharing its
    blocks where they are admitted after it is prefilled), prefilled in chunks of at most 24, over a
    pool too small to hold them all (preemption): each one's tokens are `generate`'s on it alone."""
    engine = Engine(model, num_blocks=100, block_size=4, prefill_chunk=24, prefix_sharing=True)
    engine.start()
    try:
        prompts = _prompts(16, 70)
        longest = max(prompts, key=len)
        prompts += [longest[:cut] + tail for cut, tail in ((len(longest), [7]), (40, [8, 9]), (13, []), (25, [3]))]
        results = _run(engine, prompts, SamplingParams(max_tokens=20, temperature=0, stop_token_ids=(EOS,)))
    finally:
        engine.stop()
    for prompt, (tokens, reason) in zip(prompts, results):
        assert tokens == _alone(model, prompt, 20)
        assert reason == ("stop" if tokens[-1] == EOS else "length")
    assert engine.pool.used_blocks() == 0
    assert engine.preemptions > 0


@pytest.mark.parametrize("native", [True, False], ids=["native", "eager"])
def test_a_mixed_batch_decodes_on_generates_step_with_generates_tokens(model, native):
    """8 prompts of 1-40 tokens, whose rows decode together at different positions (GQA; Ministral's
    window-7 layers round their ring): the batched step is the one `generate` runs (the native step
    for Mistral and Ministral unless turned off; Mixtral's experts fall back to the eager step), every
    one-token step runs on it, and each request's greedy tokens are `generate`'s on its prompt alone
    with that step."""
    model.native_decode = native
    eager_calls = []
    eager = model.decode_step
    model.decode_step = lambda ids, *args: eager_calls.append(ids.shape[1]) or eager(ids, *args)
    try:
        expected_kind = "native" if native and not model.decoder.decoder_spec.num_experts else "eager"
        engine = Engine(model, num_blocks=200, block_size=4, prefill_chunk=16)
        assert engine.step_kind == expected_kind
        engine.start()
        try:
            prompts = _prompts(8, 40, seed=11)
            results = _run(engine, prompts, SamplingParams(max_tokens=12, temperature=0, stop_token_ids=(EOS,)))
        finally:
            engine.stop()
        one_token_calls = eager_calls.count(1)
        for prompt, (tokens, _) in zip(prompts, results):
            assert tokens == _alone(model, prompt, 12)
            assert decode_steps(model).last_kind == expected_kind
    finally:
        del model.native_decode, model.decode_step
    assert (one_token_calls == 0) == (expected_kind == "native")
    assert engine.pool.used_blocks() == 0


def test_the_native_step_reads_the_pool_as_the_eager_step(model):
    """Over the same blocks, rows at positions 3, 17 and 40 (past Ministral's window), the native
    step's logits are the eager step's, bit for bit, and it writes the same keys and values."""
    steps = decode_steps(model)
    native, kind = steps.batch_step()
    if kind != "native":
        pytest.skip("the native step does not serve this model")
    spec = model.decoder.decoder_spec
    pools = [BlockPool(spec.layer_windows, spec.num_kv_heads, spec.head_dim, 4, 64, torch.float32) for _ in range(2)]
    prompts = [p * n for p, n in zip(_prompts(3, 2, seed=5), (4, 18, 41))]
    logits = []
    with torch.no_grad():
        for pool, step in zip(pools, (model.decode_step, native)):
            rows = [SequenceBlocks() for _ in prompts]
            for blocks, prompt in zip(rows, prompts):
                assert pool.extend(blocks, 0, len(prompt))
                positions = torch.arange(len(prompt) - 1)[None]
                model.decode_step(torch.tensor([prompt[:-1]]), positions, positions, None,
                                  BatchCache(pool, [blocks], positions))
            positions = torch.tensor([[len(p) - 1] for p in prompts])
            logits.append(step(torch.tensor([[p[-1]] for p in prompts]), positions, positions, None,
                               BatchCache(pool, rows, positions)))
    assert torch.equal(logits[0], logits[1])
    for eager_buffer, native_buffer in zip(pools[0].keys + pools[0].values, pools[1].keys + pools[1].values):
        assert torch.equal(eager_buffer, native_buffer)


def test_the_native_step_refuses_a_table_without_the_blocks_it_reads(model):
    native, kind = decode_steps(model).batch_step()
    if kind != "native":
        pytest.skip("the native step does not serve this model")
    spec = model.decoder.decoder_spec
    pool = BlockPool(spec.layer_windows, spec.num_kv_heads, spec.head_dim, 4, 8, torch.float32)
    blocks = SequenceBlocks()
    assert pool.extend(blocks, 0, 10)
    positions = torch.tensor([[9]])
    cache = BatchCache(pool, [blocks], positions)
    cache.block_tables.tables = [table[:, :2] for table in cache.block_tables.tables]  # position 9 is in block 2
    with pytest.raises(RuntimeError, match=r"row 0 at position 9 needs layer 0's blocks .*\.\.2; its table holds 0\.\.1"):
        native(torch.tensor([[5]]), positions, positions, None, cache)


def test_rows_at_different_positions_equal_each_row_alone(model):
    """One decode call over rows at positions 3, 17 and 40 gives each row's logits alone (1e-5)."""
    spec = model.decoder.decoder_spec
    pool = BlockPool(spec.layer_windows, spec.num_kv_heads, spec.head_dim, 4, 64, torch.float32)
    prompts = _prompts(3, 2, seed=5)
    prompts = [p * n for p, n in zip(prompts, (4, 18, 41))]
    rows = [SequenceBlocks() for _ in prompts]
    alone = []
    with torch.no_grad():
        for blocks, prompt in zip(rows, prompts):
            assert pool.extend(blocks, 0, len(prompt))
            positions = torch.arange(len(prompt) - 1)[None]
            model.decode_step(torch.tensor([prompt[:-1]]), positions, positions, None, BatchCache(pool, [blocks], positions))
            cache = model.decoder.make_cache()
            alone.append(model(torch.tensor([prompt]), past_key_values=cache).logits[0, -1])
        positions = torch.tensor([[len(p) - 1] for p in prompts])
        batched = model.decode_step(torch.tensor([[p[-1]] for p in prompts]), positions, positions, None,
                                    BatchCache(pool, rows, positions))
    torch.testing.assert_close(batched, torch.stack(alone), rtol=1e-5, atol=1e-5)


def _step_until(engine: Engine, done) -> None:
    for _ in range(500):
        if done():
            return
        engine.step()
    raise AssertionError("the engine did not get there in 500 steps")


def test_a_common_prompt_prefix_is_shared_block_for_block(model):
    """B's prompt starts with the 3 blocks (12 tokens) of A's: once A has written them, B takes
    them (each group the ones its first query sees: Ministral's window-7 layers blocks 1-2) and
    prefills only its own tail; the two hold fewer blocks than apart, and a shared block survives A's
    cancellation. Both give `generate`'s tokens alone; every block comes back, every offer is
    withdrawn."""
    engine = Engine(model, num_blocks=64, block_size=4, prefix_sharing=True)
    common = _prompts(1, 2, seed=7)[0] * 12
    prompts = [common + [5, 6, 7], common + [9, 10]]
    inboxes = [queue.Queue(), queue.Queue()]
    greedy = SamplingParams(max_tokens=10, temperature=0)
    first = engine.submit(prompts[0], greedy, inboxes[0].put)
    _step_until(engine, lambda: first.generated >= 1)
    offered = {group: (first.blocks.first[group], list(table)) for group, table in first.blocks.tables.items()}
    second = engine.submit(prompts[1], greedy, inboxes[1].put)
    run_batch, prefilled = engine._run_batch, []
    engine._run_batch = lambda rows, tokens, positions: (
        prefilled.append(positions[0].tolist()) if tokens.shape[1] > 1 else None) or run_batch(rows, tokens, positions)
    engine.step()
    assert prefilled == [[12, 13]] and second.generated == 1
    for group, (start, table) in offered.items():
        shared = range(second.blocks.first[group], 3)
        blocks = second.blocks.tables[group][: len(shared)]
        assert len(shared) > 0 and blocks == table[shared.start - start: 3 - start]
        # A gives back the sliding blocks its next query no longer sees; B keeps them
        assert [engine.pool.holders[group][b] for b in blocks] == [1 + (b in first.blocks.tables[group]) for b in blocks]
    _step_until(engine, lambda: second.generated >= 1)
    apart = sum(len(table) for s in (first, second) for table in s.blocks.tables.values())
    assert engine.pool.used_blocks() < apart
    assert f"lamina_kv_blocks_used {engine.pool.used_blocks()}\n" in engine.metrics.render()
    first_tokens = [inboxes[0].get().token for _ in range(first.generated)]
    engine.cancel(first)
    _step_until(engine, lambda: second.done)
    assert _collect(inboxes[1])[0] == _alone(model, prompts[1], 10)
    assert first_tokens == _alone(model, prompts[0], 10)[: len(first_tokens)]
    assert engine.pool.used_blocks() == 0
    assert all(not offered for offered in engine.pool.offered.values())


def test_sliding_layers_keep_only_their_windows_blocks():
    pool = BlockPool([None, 6], kv_heads=1, head_dim=2, block_size=4, num_blocks=8, dtype=torch.float32)
    blocks = SequenceBlocks()
    assert pool.extend(blocks, 0, 9)  # positions 0..8: three blocks in each group
    assert [len(blocks.tables[g]) for g in (None, 6)] == [3, 3]
    pool.release_outside_window(blocks, 10)  # a query at 10 sees 5..10: logical block 0 (0..3) is gone
    assert len(blocks.tables[None]) == 3 and len(blocks.tables[6]) == 2 and blocks.first[6] == 1
    assert pool.extend(blocks, 40, 41) is False  # the full group would need 8 more blocks
    assert pool.used_blocks() == 3 and blocks.first[6] == 8  # the sliding blocks are out of any window
    pool.release(blocks)
    assert pool.used_blocks() == 0 and sorted(pool.free[6]) == list(range(8))


def test_cancelled_and_finished_sequences_free_their_blocks(model):
    engine = Engine(model, num_blocks=64, block_size=4)
    engine.start()
    try:
        events = queue.Queue()
        sequence = engine.submit(list(range(3, 30)), SamplingParams(max_tokens=100, temperature=0), events.put)
        assert not isinstance(events.get(timeout=60), Finished)
        engine.cancel(sequence)
        assert _collect(events)[1] == "cancelled"
        assert engine.pool.used_blocks() == 0
    finally:
        engine.stop()


def test_seeded_sampling_repeats_and_top_p_one_token_is_greedy(model):
    engine = Engine(model, num_blocks=64, block_size=4)
    engine.start()
    try:
        prompt = [_prompts(1, 10)[0]]
        sampled = SamplingParams(max_tokens=12, temperature=1.5, seed=7)
        first, again = _run(engine, prompt * 2, sampled)
        narrow = _run(engine, prompt, SamplingParams(max_tokens=12, temperature=1.0, top_p=1e-6, seed=1))[0]
    finally:
        engine.stop()
    assert first == again
    assert narrow[0] == _alone(model, prompt[0], 12)[: len(narrow[0])]


def test_sampled_rows_are_drawn_together_as_each_would_be_alone():
    """One batch of greedy rows and rows with their own temperature, top-p and seed, over 20 steps:
    each row draws the token `generate`'s processors and `torch.multinomial` with its generator give
    it alone (what a seeded request returned when rows were drawn one by one)."""
    settings = [(0.0, 1.0, None), (1.5, 1.0, 7), (0.7, 0.9, 8), (1.0, 0.5, 9), (0.0, 0.3, 10), (2.0, 0.95, 11)]
    rows = [Sequence([], SamplingParams(max_tokens=1, temperature=temperature, top_p=top_p, seed=seed), print,
                     generator=torch.Generator().manual_seed(seed) if seed is not None else None)
            for temperature, top_p, seed in settings]
    alone = [torch.Generator().manual_seed(seed) if seed is not None else None for *_, seed in settings]
    logits_generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(len(rows), VOCAB, generator=logits_generator) * 4
        expected = []
        for row, (temperature, top_p, _), generator in zip(logits, settings, alone):
            if temperature == 0:
                expected.append(int(row.argmax()))
                continue
            scores = TemperatureLogitsWarper(temperature)(None, row[None])
            if top_p < 1:
                scores = TopPLogitsWarper(top_p)(None, scores)
            expected.append(int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)))
        assert Engine._sample(rows, logits) == expected


def test_a_request_that_cannot_fit_is_refused_with_its_lengths(model):
    engine = Engine(model, num_blocks=8, block_size=4, max_waiting=1)
    with pytest.raises(Exception, match="maximum context length is 128 tokens.*120 prompt tokens and max_tokens 9"):
        engine.submit([5] * 120, SamplingParams(max_tokens=9), lambda event: None)
    if None in engine.pool.groups:
        with pytest.raises(Exception, match="needs 10 KV blocks"):
            engine.submit([5] * 30, SamplingParams(max_tokens=9), lambda event: None)
    engine.submit([5], SamplingParams(max_tokens=1), lambda event: None)  # the loop is not started: it waits
    with pytest.raises(QueueFull):
        engine.submit([5], SamplingParams(max_tokens=1), lambda event: None)
