"""The real Mistral tokenizer files shipped in the mistral-common wheel: lamina's ids equal
mistral_common's (and transformers' where it agrees), decoding round-trips, instruct formats
match, streaming never splits a character."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.tokenizers import AutoTokenizer, IncrementalDetokenizer
from lamina.tokenizers.mistral import instruct_version
from tests.tokenizers.conftest import MISTRAL_DATA
from tests.tokenizers.corpus import corpus

pytest.importorskip("mistral_common")

VERSIONS = ["v1", "v3", "v7", "tekken"]
TEXTS = corpus()
LOOKALIKES = ("<s>", "</s>", "<unk>", "[INST]", "[/INST]")


def _reference_ids(reference, version, text, bos=False):
    return reference[version].instruct_tokenizer.tokenizer.encode(text, bos=bos, eos=False)


@pytest.mark.parametrize("version", VERSIONS)
def test_corpus_ids_equal_mistral_common(version, lamina_mistral, reference_mistral):
    assert len(TEXTS) >= 200
    tok = lamina_mistral[version]
    # mistral_common encodes special-token look-alikes as text: split_special_tokens=True does too
    ours = tok(TEXTS, split_special_tokens=True)["input_ids"]
    theirs = [_reference_ids(reference_mistral, version, text, bos=True) for text in TEXTS]
    mismatches = [(t, a, b) for t, a, b in zip(TEXTS, ours, theirs) if a != b]
    assert not mismatches, mismatches[:3]
    # text without look-alikes encodes the same whether special tokens are parsed or not
    plain = [t for t in TEXTS if not any(s in t for s in LOOKALIKES)]
    assert tok(plain)["input_ids"] == [_reference_ids(reference_mistral, version, t, bos=True) for t in plain]


@pytest.mark.parametrize("version", VERSIONS)
def test_decode_round_trips_where_reference_does(version, lamina_mistral, reference_mistral):
    tok = lamina_mistral[version]
    reference = reference_mistral[version].instruct_tokenizer.tokenizer
    round_trips = 0
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
        decoded = tok.decode(ids)
        assert decoded == reference.decode(ids), text
        if reference.decode(reference.encode(text, bos=False, eos=False)) == text:
            assert decoded == text
            round_trips += 1
    assert round_trips > len(TEXTS) // 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40))
@pytest.mark.parametrize("version", VERSIONS)
def test_random_text_equals_mistral_common(version, text, lamina_mistral, reference_mistral):
    tok = lamina_mistral[version]
    reference = reference_mistral[version].instruct_tokenizer.tokenizer
    ids = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
    assert ids == reference.encode(text, bos=False, eos=False)
    if reference.decode(ids) == text:
        assert tok.decode(ids) == text


CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+2? [INST] </s>"},
        {"role": "assistant", "content": "4  "},
        {"role": "user", "content": "And 3+3?"},
        {"role": "user", "content": "日本語で 😀"},
    ],
    [
        {"role": "system", "content": "S1"},
        {"role": "system", "content": "S2"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "  spaced\n\nlines  "},
    ],
    [{"role": "system", "content": "S"}, {"role": "assistant", "content": "first"}, {"role": "user", "content": "u"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}],
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_instruct_format_equals_mistral_common(version, conversation, lamina_mistral, reference_mistral):
    # v1 puts the system prompt before the first user message, v3 before the last, v7 in place
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(messages=[kinds[m["role"]](content=m["content"]) for m in conversation])
    expected = reference_mistral[version].encode_chat_completion(request).tokens
    assert lamina_mistral[version].encode_instruct(conversation) == expected


def test_instruct_version_from_file_name_and_config(lamina_mistral):
    # a ".model.v7" file name says v7; tekken files state theirs (tekken_240911: v3) in their config
    assert instruct_version(AutoTokenizer.from_pretrained(MISTRAL_DATA / "mistral_instruct_tokenizer_241114.model.v7")) == "v7"
    assert lamina_mistral["tekken"].extra_config["mistral_instruct_version"] == "v3"
    assert [instruct_version(lamina_mistral[v]) for v in ("v1", "v3", "v7")] == ["v1", "v3", "v7"]


@pytest.mark.parametrize("version", VERSIONS)
def test_streaming_never_emits_broken_characters(version, lamina_mistral):
    tok = lamina_mistral[version]
    for text in TEXTS[:80]:
        ids = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
        stream = IncrementalDetokenizer(tok)
        pieces = [stream.push(token) for token in ids] + [stream.flush()]
        assert "".join(pieces) == tok.decode(ids), text
        if "\ufffd" not in tok.decode(ids):
            assert not any("\ufffd" in piece for piece in pieces), (text, pieces)


def test_tekken_has_multibyte_pieces_that_stream_whole(lamina_mistral):
    tok = lamina_mistral["tekken"]
    ids = tok.encode("🧑🏻‍💻 ꙮ 𓀀", add_special_tokens=False)
    # some tokens are not whole characters on their own ...
    assert any("\ufffd" in tok.decode([token]) for token in ids)
    stream = IncrementalDetokenizer(tok)
    pieces = [stream.push([token]) for token in ids]
    # ... yet every emitted piece is
    assert "".join(pieces) + stream.flush() == "🧑🏻‍💻 ꙮ 𓀀"
    assert all("\ufffd" not in piece for piece in pieces)


def test_tekken_special_token_layout(lamina_mistral, reference_mistral):
    from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

    tok = lamina_mistral["tekken"]
    tekken = reference_mistral["tekken"].instruct_tokenizer.tokenizer
    assert tok.convert_ids_to_tokens(list(range(tekken.num_special_tokens))) == [
        tekken.id_to_piece(i) for i in range(tekken.num_special_tokens)
    ]
    assert len(tok) == tok.vocab_size == tekken.n_words
    # every special id is skipped when decoding, as mistral_common's default policy does
    ids = [tekken.bos_id, 3, *tekken.encode("hi", bos=False, eos=False), 4, 999, tekken.eos_id]
    assert tok.decode(ids, skip_special_tokens=True) == tekken.decode(ids) == "hi"
    assert tok.decode(ids) == tekken.decode(ids, special_token_policy=SpecialTokenPolicy.KEEP)
