"""TextStreamer / TextIteratorStreamer: the same pieces as transformers' streamers, whole UTF-8
characters only, and live text from `generate`."""

from __future__ import annotations

import io
import threading
from contextlib import redirect_stdout

import pytest
import torch

import lamina
from lamina.errors import InputError
from lamina.generation.streamers import TextIteratorStreamer, TextStreamer

transformers = pytest.importorskip("transformers")


class ByteTokenizer:
    """Each id is a byte (ids ≥ 256: whole words); decoding replaces incomplete UTF-8 like
    byte-fallback and tekken vocabularies do."""

    WORDS = {256: " hello", 257: " world", 258: "\n", 259: " 日本", 260: "語"}

    def decode(self, ids, skip_special_tokens=False):
        ids = [ids] if isinstance(ids, int) else ids  # real tokenizers take one id too
        data = b"".join(self.WORDS[i].encode() if i in self.WORDS else bytes([i]) for i in ids)
        return data.decode("utf-8", errors="replace")


def _ids(*parts):
    ids = []
    for part in parts:
        ids.extend([part] if isinstance(part, int) else list(part.encode()))
    return ids


SEQUENCES = [
    _ids(256, 257, " again", 258, "x", 257),
    _ids(259, 260, 260, " a", 256),
    _ids("ab", 256, 258, 258, 257, " end."),
]


def _stream(streamer_class, ids, prompt_length, **kwargs):
    pieces = []
    streamer = streamer_class(ByteTokenizer(), **kwargs)
    streamer.on_finalized_text = lambda text, stream_end=False: pieces.append((text, stream_end))
    streamer.put(torch.tensor([ids[:prompt_length]]))
    for token in ids[prompt_length:]:
        streamer.put(torch.tensor([token]))
    streamer.end()
    return [(text, end) for text, end in pieces if text or end]  # transformers also reports empty pieces


@pytest.mark.parametrize("ids", SEQUENCES)
@pytest.mark.parametrize("skip_prompt", [False, True])
def test_pieces_equal_transformers(ids, skip_prompt):
    ours = _stream(TextStreamer, ids, 2, skip_prompt=skip_prompt)
    theirs = _stream(transformers.TextStreamer, ids, 2, skip_prompt=skip_prompt)
    assert ours == theirs


def test_split_multibyte_characters_are_held_until_complete():
    text = "é 日本語 ok"
    ids = list(text.encode())
    pieces = _stream(TextStreamer, ids, 0)
    assert all("\ufffd" not in piece for piece, _ in pieces)
    assert "".join(piece for piece, _ in pieces) == text


def test_text_streamer_prints_and_rejects_batches():
    out = io.StringIO()
    streamer = TextStreamer(ByteTokenizer(), skip_prompt=True, stream=out)
    streamer.put(torch.tensor([[65, 66]]))
    for token in (256, 257, 258):
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert out.getvalue() == " hello world\n\n"
    with pytest.raises(InputError, match="batch of 2"):
        TextStreamer(ByteTokenizer()).put(torch.zeros(2, 3, dtype=torch.long))


def test_iterator_streamer_receives_generate_output_live(tmp_path):
    torch.manual_seed(0)
    config = lamina.MistralConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, eos_token_id=None)
    model = lamina.MistralForCausalLM(config).eval()
    prompt = torch.tensor([list(b"Hi there")])
    streamer = TextIteratorStreamer(ByteTokenizer(), skip_prompt=True, timeout=60)
    result = {}
    thread = threading.Thread(target=lambda: result.update(ids=model.generate(prompt, max_new_tokens=12, streamer=streamer)))
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == ByteTokenizer().decode(result["ids"][0, prompt.shape[1]:].tolist())
    out = io.StringIO()
    with redirect_stdout(out):
        again = model.generate(prompt, max_new_tokens=12, streamer=TextStreamer(ByteTokenizer()))
    assert torch.equal(again, result["ids"])
    assert out.getvalue() == ByteTokenizer().decode(again[0].tolist()) + "\n"


def test_real_tekken_multibyte_pieces_stream_as_whole_characters():
    """Tekken splits emoji over tokens that are not valid UTF-8 alone."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mistral_common")
    if spec is None:
        pytest.skip("mistral-common is not installed")
    tokenizer = lamina.AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]) / "data" / "tekken_240911.json")
    text = "Ünïcödé 日本語のテキスト 🤖 emoji 😀 done"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # the case under test is present
    pieces = []
    streamer = TextStreamer(tokenizer)
    streamer.on_finalized_text = lambda piece, stream_end=False: pieces.append(piece)
    streamer.put(torch.tensor([ids[:1]]))
    for token in ids[1:]:
        streamer.put(torch.tensor([token]))
    streamer.end()
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == text
