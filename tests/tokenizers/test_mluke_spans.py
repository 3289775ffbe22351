"""MLukeTokenizer's words against transformers' fast XLM-R tokenizer built from the same
sentencepiece model (the same pieces and ids; transformers' own MLukeTokenizer keeps no offsets):
`offset_mapping`, `word_ids()`, `token_to_chars`, `char_to_token`, overflowing windows with
`stride`, `special_tokens_mask`, `pad_to_multiple_of`, `is_split_into_words`, and every
combination of padding, truncation and max_length. Then what only mLUKE has: entities in
overflowing windows and the characters of their mentions.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from lamina import MLukeTokenizer

transformers = pytest.importorskip("transformers")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mluke"
EN = "Tokyo is the capital of Japan and Paris is the capital of France."
TEXTS = [
    EN,
    "東京は日本の首都です。",
    "  leading and   inner spaces ",
    "Beyoncé lives in Los Angeles.",
    "the <mask> of a<mask>b",
    "Don't stop , it 's fine !",
    "",
]
PAIRS = [(EN, TEXTS[1]), (TEXTS[3], TEXTS[2]), (TEXTS[4], "x")]
WORDS = [["Tokyo", "is", "big"], ["Beyoncé", "東京"], ["a"]]


@pytest.fixture(scope="module")
def ours() -> MLukeTokenizer:
    return MLukeTokenizer.from_pretrained(FIXTURES)


@pytest.fixture(scope="module")
def theirs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("xlmr")
    shutil.copyfile(FIXTURES / "sentencepiece.bpe.model", directory / "sentencepiece.bpe.model")
    return transformers.XLMRobertaTokenizerFast.from_pretrained(str(directory))


def _spans(encoding, rows: int) -> list:
    """What a BatchEncoding says about where its tokens come from, row by row."""
    out = []
    for row in range(rows):
        count = len(encoding.word_ids(row))
        out.append((
            encoding.word_ids(row),
            encoding.sequence_ids(row),
            [encoding.token_to_chars(row, token) for token in range(count)],
            [encoding.char_to_token(row, char) for char in range(40)],
        ))
    return out


def _fields(encoding, *keys: str) -> dict:
    return {key: encoding[key] for key in keys if key in encoding}


def test_offsets_and_word_ids_match_the_fast_tokenizer(ours, theirs) -> None:
    keys = ("input_ids", "attention_mask", "offset_mapping", "special_tokens_mask")
    options = {"return_offsets_mapping": True, "return_special_tokens_mask": True}
    for text in TEXTS:
        mine, reference = ours(text, **options), theirs(text, **options)
        assert _fields(mine, *keys) == _fields(reference, *keys), text
        assert _spans(mine, 1) == _spans(reference, 1), text
    for text, pair in PAIRS:
        mine, reference = ours(text, pair, **options), theirs(text, pair, **options)
        assert _fields(mine, *keys) == _fields(reference, *keys), (text, pair)
        assert _spans(mine, 1) == _spans(reference, 1), (text, pair)
    mine = ours(TEXTS, padding=True, pad_to_multiple_of=8, padding_side="left", **options)
    reference = theirs(TEXTS, padding=True, pad_to_multiple_of=8, padding_side="left", **options)
    assert _fields(mine, *keys) == _fields(reference, *keys)
    assert _spans(mine, len(TEXTS)) == _spans(reference, len(TEXTS))


def test_special_token_text_split_as_plain_text(ours, theirs) -> None:
    text = "the <mask> of <s>x</s>"
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    # as transformers' Python tokenizers split it (its converted fast one still finds the tokens
    # in its vocabulary): the whole text to sentencepiece, in XLM-R's ids
    split = ours(text, split_special_tokens=True, return_offsets_mapping=True)
    pieces = ours.sp_model.encode(text)
    assert split["input_ids"] == [0, *[piece + 1 if piece else ours.unk_token_id for piece in pieces], 2]
    assert ours.unk_token_id in split["input_ids"] and ours.mask_token_id not in split["input_ids"]
    assert split["offset_mapping"][1:4] == [(0, 1), (1, 3), (4, 5)]


def test_pre_split_words_match_the_fast_tokenizer(ours, theirs) -> None:
    keys = ("input_ids", "offset_mapping")
    for words in WORDS:
        mine = ours(words, is_split_into_words=True, return_offsets_mapping=True)
        reference = theirs(words, is_split_into_words=True, return_offsets_mapping=True)
        assert _fields(mine, *keys) == _fields(reference, *keys)
        assert mine.word_ids() == reference.word_ids()
    mine = ours(WORDS, is_split_into_words=True, padding=True)
    assert mine["input_ids"] == theirs(WORDS, is_split_into_words=True, padding=True)["input_ids"]


@pytest.mark.parametrize("stride", [0, 2])
def test_overflowing_windows_match_the_fast_tokenizer(ours, theirs, stride: int) -> None:
    keys = ("input_ids", "attention_mask", "offset_mapping", "overflow_to_sample_mapping")
    options = {"truncation": True, "max_length": 9, "stride": stride, "return_overflowing_tokens": True,
               "return_offsets_mapping": True, "padding": True}
    mine, reference = ours(TEXTS[:4], **options), theirs(TEXTS[:4], **options)
    assert _fields(mine, *keys) == _fields(reference, *keys)
    assert _spans(mine, len(mine["input_ids"])) == _spans(reference, len(reference["input_ids"]))
    pairs = {**options, "truncation": "only_second", "max_length": 30}
    mine, reference = ours(*zip(*PAIRS[:2]), **pairs), theirs(*map(list, zip(*PAIRS[:2])), **pairs)
    assert _fields(mine, *keys) == _fields(reference, *keys)


def test_pad_leaves_per_example_values_alone(ours, theirs) -> None:
    """A collator's features: the per-token fields are padded, labels and lengths are not."""
    features = [{"input_ids": [0, 5, 2], "labels": 1, "length": 3}, {"input_ids": [0, 2], "labels": 0, "length": 2}]
    mine, reference = ours.pad(features, return_tensors="pt"), theirs.pad(features, return_tensors="pt")
    assert {key: value.tolist() for key, value in mine.items()} == {
        key: value.tolist() for key, value in reference.items()
    }


PADDING = [False, True, "longest", "max_length", "do_not_pad"]
TRUNCATION = [None, False, True, "longest_first", "only_first", "do_not_truncate"]


@pytest.mark.parametrize(("padding", "truncation", "max_length"),
                         list(itertools.product(PADDING, TRUNCATION, [None, 8])))
def test_padding_and_truncation_combinations_match_transformers(ours, theirs, padding, truncation, max_length) -> None:
    """A bare `max_length` truncates only while `padding` is off, as transformers settles it."""
    options = {"padding": padding, "truncation": truncation, "max_length": max_length}
    batch = [EN, TEXTS[3]]
    mine, reference = ours(batch, **options), theirs(batch, **options)
    assert mine["input_ids"] == reference["input_ids"]
    assert mine["attention_mask"] == reference["attention_mask"]


def test_entities_follow_their_mentions_into_overflowing_windows(ours) -> None:
    titles = ["Tokyo", "Japan", "Paris", "France"]
    spans = [(EN.index(title), EN.index(title) + len(title)) for title in titles]
    encoded = ours(EN, entity_spans=spans, entities=titles, truncation=True, max_length=12, stride=3,
                   return_overflowing_tokens=True, return_offsets_mapping=True)
    assert set(encoded["overflow_to_sample_mapping"]) == {0} and len(encoded["input_ids"]) > 2
    seen = []
    for row, (ids, offsets, entity_ids, positions) in enumerate(zip(
            encoded["input_ids"], encoded["offset_mapping"], encoded["entity_ids"], encoded["entity_position_ids"])):
        assert len(ids) <= 12
        for entity, mention in zip(entity_ids, positions):
            tokens = [position for position in mention if position >= 0]
            title = next(title for title in titles if ours.entity_vocab[title] == entity)
            # the mention's tokens are the title's characters in the text, and nothing else
            assert EN[offsets[tokens[0]][0]:offsets[tokens[-1]][1]] == title
            assert ours.decode([ids[position] for position in tokens]) == title
            seen.append(title)
    assert set(seen) == set(titles)


def test_offsets_of_a_text_cut_at_entity_spans(ours) -> None:
    text = "Albert Einstein was born in Ulm."
    spans = [(0, 15), (3, 6), (28, 31)]
    encoded = ours(text, entity_spans=spans, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    for (start, end), positions in zip(spans, encoded["entity_position_ids"]):
        tokens = [position for position in positions if position >= 0]
        assert (offsets[tokens[0]][0], offsets[tokens[-1]][1]) == (start, end)
    assert encoded.char_to_token(28) == [p for p in encoded["entity_position_ids"][2] if p >= 0][0]
    assert encoded.word_ids()[1:4] == [0, 0, 0]  # "Albert", cut inside, is still one word


def test_task_markers_span_no_characters(ours) -> None:
    pair = MLukeTokenizer.from_pretrained(FIXTURES, task="entity_pair_classification")
    text = "Albert Einstein was born in Ulm."
    encoded = pair(text, entity_spans=[(0, 15), (28, 31)], return_offsets_mapping=True,
                   return_special_tokens_mask=True)
    markers = [index for index, token in enumerate(encoded["input_ids"])
               if token in (pair.entity_token_1_id, pair.entity_token_2_id)]
    assert [encoded["offset_mapping"][index] for index in markers] == [(0, 0), (15, 15), (28, 28), (31, 31)]
    assert [encoded.word_ids()[index] for index in markers] == [None] * 4
    assert [encoded["special_tokens_mask"][index] for index in markers] == [0] * 4
    assert encoded["input_ids"] == pair(text, entity_spans=[(0, 15), (28, 31)])["input_ids"]
