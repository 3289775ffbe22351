"""feature-extraction, fill-mask and text-generation against transformers 5's pipelines on the
real WordPiece vocabulary: hidden states to 1e-5 for every family's base model, fillers of the
masked LMs (with targets and batches), and greedy generation of every causal LM (texts, chats,
return_full_text, return_tensors, a streamer)."""

from __future__ import annotations

import pytest

import lamina
from tests.pipelines.helpers import DECODERS, FAMILIES, assert_close, build, tokenizers, transformers

TEXTS = ["the capital of france is paris.", "a river runs through the old city", "hello"]
CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def pair(family: str, head: str, directory):
    reference, ours = build(family, head, directory / "model")
    their_tokenizer, our_tokenizer = tokenizers(directory / "tokenizer", family)
    return reference, ours, their_tokenizer, our_tokenizer


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_feature_extraction_equals_transformers(family, tmp_path):
    reference, ours, their_tokenizer, our_tokenizer = pair(family, "base", tmp_path)
    theirs = transformers.pipeline("feature-extraction", model=reference, tokenizer=their_tokenizer)
    mine = lamina.pipeline("feature-extraction", model=ours, tokenizer=our_tokenizer)
    assert_close(mine(TEXTS[0]), theirs(TEXTS[0]), atol=1e-4)
    assert_close(mine(TEXTS), theirs(TEXTS), atol=1e-4)
    found = mine(TEXTS[1], return_tensors=True)
    assert found.shape == (1, len(our_tokenizer(TEXTS[1])["input_ids"]), reference.config.hidden_size)


@pytest.mark.parametrize("family", ["megatron_bert", "mobilebert"])
def test_fill_mask_equals_transformers(family, tmp_path):
    reference, ours, their_tokenizer, our_tokenizer = pair(family, "masked", tmp_path)
    theirs = transformers.pipeline("fill-mask", model=reference, tokenizer=their_tokenizer)
    mine = lamina.pipeline("fill-mask", model=ours, tokenizer=our_tokenizer)
    texts = ["the capital of france is [MASK].", "[MASK] river runs through the [MASK] city"]
    for inputs in (texts[0], texts, [texts[1]]):
        assert_close(mine(inputs, top_k=3), theirs(inputs, top_k=3))
    targets = ["paris", "london", "city", "notaword"]
    assert_close(mine(texts[0], targets=targets), theirs(texts[0], targets=targets))
    batched = lamina.pipeline("fill-mask", model=ours, tokenizer=our_tokenizer, batch_size=2)
    assert_close(batched(texts, top_k=2), theirs(texts, top_k=2), atol=1e-4)


@pytest.mark.parametrize(
    "family", [family if family == "gpt2" else pytest.param(family, marks=pytest.mark.slow) for family in DECODERS]
)
def test_text_generation_equals_transformers(family, tmp_path):
    """13-31 s a family (three generations of each kind): GPT-2 in the quick run, the rest marked slow."""
    reference, ours, their_tokenizer, our_tokenizer = pair(family, "causal", tmp_path)
    their_tokenizer.chat_template = our_tokenizer.chat_template = CHAT_TEMPLATE
    theirs = transformers.pipeline("text-generation", model=reference, tokenizer=their_tokenizer)
    mine = lamina.pipeline("text-generation", model=ours, tokenizer=our_tokenizer)
    greedy = dict(do_sample=False, max_new_tokens=6)
    for options in (greedy, {**greedy, "return_full_text": False}, {**greedy, "return_tensors": True}):
        for inputs in (TEXTS[0], TEXTS[:2]):
            assert mine(inputs, **options) == theirs(inputs, **options), options
    chat = [{"role": "user", "content": "where is paris?"}]
    assert mine(chat, **greedy) == theirs(chat, **greedy)
    prefill = [*chat, {"role": "assistant", "content": "it is in"}]
    assert mine(prefill, **greedy) == theirs(prefill, **greedy)
    assert mine([chat, chat], **greedy) == theirs([chat, chat], **greedy)


def test_text_generation_streams_and_batches(tmp_path):
    reference, ours, their_tokenizer, our_tokenizer = pair("mistral", "causal", tmp_path)
    their_tokenizer.padding_side = our_tokenizer.padding_side = "left"
    greedy = dict(do_sample=False, max_new_tokens=5)
    expected = transformers.pipeline("text-generation", model=reference, tokenizer=their_tokenizer)(TEXTS, **greedy)
    batched = lamina.pipeline("text-generation", model=ours, tokenizer=our_tokenizer, batch_size=3)
    assert batched(TEXTS, **greedy) == expected
    streamer = lamina.TextIteratorStreamer(our_tokenizer, skip_prompt=True, skip_special_tokens=True)
    single = lamina.pipeline("text-generation", model=ours, tokenizer=our_tokenizer)
    result = single(TEXTS[0], streamer=streamer, return_full_text=False, **greedy)
    assert "".join(streamer) == result[0]["generated_text"]
