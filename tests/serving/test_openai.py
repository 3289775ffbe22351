"""The server through the official `openai` client and raw HTTP, on a tiny random Mistral with a
word-level tokenizer (token i is " w{i}"): chat, completions, streaming, models, logprobs, stop
strings, n, echo, embeddings (MegatronBERT, MobileBERT) against transformers, metrics, and every
bad request as OpenAI's error with the client's own exception type."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch

import lamina
from tests.serving.servers import EOS, Server, save_word_tokenizer, tiny_model, words

transformers = pytest.importorskip("transformers")
MODEL = "tiny-mistral"
KEY = "sk-test"
PROMPT = [5, 9, 14, 20, 33]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model, tokenizer = tiny_model("mistral", tmp_path_factory.mktemp("mistral"))
    with Server(MODEL, model, tokenizer, api_key=KEY, max_body_bytes=4096, num_blocks=128, block_size=4,
                max_waiting=4) as server:
        yield server, model, tokenizer


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0].url + "/v1", api_key=KEY, max_retries=0)


def _alone(model, prompt: list[int], max_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False)
    tokens = out[0, len(prompt):].tolist()
    return tokens[: tokens.index(EOS)] if EOS in tokens else tokens


def test_completions_greedy_text_is_generates(served, client):
    _, model, _ = served
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    want = _alone(model, PROMPT, 12)
    assert reply.choices[0].text == words(want)
    assert reply.choices[0].finish_reason == ("length" if len(want) == 12 else "stop")
    assert reply.usage.prompt_tokens == 5 and reply.usage.completion_tokens == 12 or EOS in want
    text = client.completions.create(model=MODEL, prompt=words(PROMPT), max_tokens=12, temperature=0, echo=True)
    assert text.choices[0].text == words(PROMPT) + words(want)


def test_chat_uses_the_template_and_streams_the_same_text(served, client):
    _, model, tokenizer = served
    messages = [{"role": "user", "content": "w7 w8 w9"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    want = words(_alone(model, prompt, 10))
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    assert reply.choices[0].message.content == want and reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens == len(prompt)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=10,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.prompt_tokens == len(prompt)


def test_logprobs_are_the_models(served, client):
    _, model, _ = served
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w5"}], max_tokens=3,
                                           temperature=0, logprobs=True, top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == 3
    for entry in entries:
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    completion = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=2)
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([PROMPT])).logits[0, -1].float(), -1).max().item()
    assert completion.choices[0].logprobs.token_logprobs[0] == pytest.approx(expected, abs=1e-4)


def test_stop_strings_n_and_seed(served, client):
    _, model, _ = served
    want = words(_alone(model, PROMPT, 12))
    stop = want.split()[3]
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop, "zz"])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].text == want[: want.index(" " + stop) + 1]
    sampled = dict(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=11, n=3)
    first, again = client.completions.create(**sampled), client.completions.create(**sampled)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]


def test_models_health_and_metrics(served, client):
    server = served[0]
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # no key needed
    assert httpx.get(server.url + "/metrics").status_code == 401
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    metrics = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}
    assert metrics["lamina_generated_tokens_total"] > 0 and metrics["lamina_kv_blocks_total"] == 128
    assert metrics["lamina_kv_blocks_used"] == 0 and metrics["lamina_requests_running"] == 0
    assert metrics['lamina_time_to_first_token_seconds_bucket{le="+Inf"}'] > 0


@pytest.mark.parametrize("arguments, error, status, says", [
    (dict(model="gpt-9", prompt="w5"), openai.NotFoundError, 404, "gpt-9"),
    (dict(model=MODEL, prompt="w5", max_tokens=0), openai.BadRequestError, 400, "max_tokens"),
    (dict(model=MODEL, prompt="w5", temperature="hot"), openai.BadRequestError, 400, "temperature"),
    (dict(model=MODEL, prompt=[5] * 126, max_tokens=5), openai.BadRequestError, 400, "126 prompt tokens"),
    (dict(model=MODEL, prompt=[500]), openai.BadRequestError, 400, "token ids in [0, 97)"),
    (dict(model=MODEL, prompt="w5", top_p=0), openai.BadRequestError, 400, "top_p"),
    (dict(model=MODEL, prompt="w5", extra_body={"response_format": {"type": "json_object"}}), openai.BadRequestError,
     400, "response_format"),
])
def test_bad_requests_raise_the_clients_errors(client, arguments, error, status, says):
    with pytest.raises(error) as caught:
        client.completions.create(**arguments)
    assert caught.value.status_code == status and says in caught.value.message


def test_bad_requests_over_raw_http(served):
    url, auth = served[0].url, {"Authorization": f"Bearer {KEY}"}
    post = lambda body, **kw: httpx.post(url + "/v1/completions", content=body, headers={**auth, **kw})  # noqa: E731
    cases = [
        (post(b"{not json"), 400, "not valid JSON"),
        (post(b'{"prompt": "w5"}'), 400, "'model' is required"),
        (post(b'{"model": "tiny-mistral", "prompt": "w5", "temperature": NaN}'), 400, "finite"),
        (post(b'{"model": "tiny-mistral", "prompt": "w5", "max_tokens": 2.5}'), 400, "max_tokens"),
        (post(b'{"model": "tiny-mistral"}'), 400, "'prompt' is required"),
        (post(b'{"model": "tiny-mistral", "prompt": "' + b"w5 " * 2000 + b'"}'), 413, "limit"),
        (httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "w5"}), 401, "API key"),
        (httpx.post(url + "/v1/chat/completions", headers=auth, json={"model": MODEL, "messages": []}), 400,
         "messages"),
        (httpx.post(url + "/v1/embeddings", headers=auth, json={"model": MODEL, "input": "w5"}), 400, "encoder"),
    ]
    for response, status, says in cases:
        assert response.status_code == status, response.text
        assert says in response.json()["error"]["message"]
    ok = httpx.post(url + "/v1/completions", headers=auth, json={"model": MODEL, "prompt": "w5", "max_tokens": 2})
    assert ok.status_code == 200  # none of that disturbed the server


@pytest.mark.parametrize("family", ["MegatronBert", "MobileBert"])
def test_embeddings_are_mean_pooled_and_normalized(family, tmp_path):
    torch.manual_seed(0)
    config = getattr(transformers, family + "Config")(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=32, **({"embedding_size": 16, "intra_bottleneck_size": 16} if family == "MobileBert" else {}))
    reference = getattr(transformers, family + "Model")(config).eval()
    reference.save_pretrained(tmp_path)
    save_word_tokenizer(tmp_path)
    model = lamina.AutoModel.from_pretrained(tmp_path).eval()
    with Server("enc", model, lamina.AutoTokenizer.from_pretrained(tmp_path)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        reply = client.embeddings.create(model="enc", input=["w5 w6 w7", "w40"])  # the client asks for base64
        raw = client.embeddings.create(model="enc", input=[[5, 6, 7]], encoding_format="float")
        with pytest.raises(openai.BadRequestError, match="at most 32"):
            client.embeddings.create(model="enc", input=[[5] * 33])
        with pytest.raises(openai.BadRequestError, match="encoder"):
            client.completions.create(model="enc", prompt="w5")
    for item, ids in zip(reply.data, ([5, 6, 7], [40])):
        with torch.no_grad():
            hidden = reference(torch.tensor([ids])).last_hidden_state[0].mean(0)
        want = torch.nn.functional.normalize(hidden, dim=0)
        torch.testing.assert_close(torch.tensor(item.embedding), want, atol=1e-4, rtol=1e-4)
        assert math.isclose(sum(v * v for v in item.embedding), 1.0, rel_tol=1e-5)
    assert raw.data[0].embedding == pytest.approx(reply.data[0].embedding, abs=1e-6)
    assert reply.usage.prompt_tokens == 4
