"""MLukeTokenizer against transformers 4.46.3's sentencepiece MLukeTokenizer.

The reference outputs in tests/fixtures/mluke/ are recorded by scripts/record_mluke_fixtures.py
(rerun it with a transformers 4.x environment); lamina must equal them field for field, except in
the few places, listed in DIVERGENCES, where lamina deliberately fixes the reference.
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from lamina import MLukeTokenizer
from lamina.errors import InputError, TokenizerError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mluke"
REFERENCE = json.loads((FIXTURES / "reference_outputs.json").read_text(encoding="utf-8"))
CASES = {case["name"]: case for case in REFERENCE["encode"]}
# a model that keeps spaces: how the text is cut around entity spans shows in its ids
KEEP_SPACES_CASES = {case["name"]: case for case in REFERENCE["encode_keep_spaces"]}
ENTITY_FIELDS = ("entity_ids", "entity_position_ids", "entity_attention_mask", "entity_token_type_ids",
                 "entity_start_positions", "entity_end_positions")

EN = "Tokyo is the capital of Japan and Paris is the capital of France."
JA = "東京は日本の首都です。"


def spans_as_tuples(value: Any) -> Any:
    """JSON lists back into the (start, end) tuples the reference was called with."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(item, int) for item in value):
        return tuple(value)
    if isinstance(value, list):
        return [spans_as_tuples(item) for item in value]
    return value


def call_args(case: dict) -> dict:
    args = dict(case["args"])
    for key in ("entity_spans", "entity_spans_pair"):
        if key in args:
            args[key] = spans_as_tuples(args[key])
    return args


def plain(value: Any) -> Any:
    """An encoding in the fixtures' JSON form (tensors as dtype + nested lists)."""
    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch."), "data": value.tolist()}
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def entities_padded_to(expected: dict, length: int) -> dict:
    """The reference's batched encoding with its entity fields cut back to `length` per example.

    The reference pads batched entities to the constructor's max_entity_length even when the
    call gives another; what is cut must be padding only.
    """
    trimmed = copy.deepcopy(expected)
    for key in ENTITY_FIELDS:
        if key not in trimmed:
            continue
        field = trimmed[key]
        rows = field["data"] if isinstance(field, dict) else field
        for index, row in enumerate(rows):
            tail = row[length:]
            assert all(item in (0, [-1] * len(item) if isinstance(item, list) else 0) for item in tail), (key, tail)
            rows[index] = row[:length]
    return trimmed


def same_as(name: str) -> dict:
    return CASES[name]["expected"]


# case → what lamina must produce instead of the reference's own output, and why
DIVERGENCES = {
    # the reference drops the pair's entities when the first text has no spans
    "pair_second_entities_only": lambda: same_as("pair_second_entities_only_empty_first"),
    # the reference pads batched entities to the constructor's max_entity_length, not the call's
    "batch_pairs_truncated": lambda: entities_padded_to(same_as("batch_pairs_truncated"), 3),
    "esc_batch_tensors": lambda: entities_padded_to(same_as("esc_batch_tensors"), 4),
}


@pytest.fixture(scope="module")
def tokenizer() -> MLukeTokenizer:
    return MLukeTokenizer.from_pretrained(FIXTURES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoding_matches_reference(name: str) -> None:
    case = CASES[name]
    tokenizer = MLukeTokenizer.from_pretrained(FIXTURES, **case["init"])
    expected = DIVERGENCES[name]() if name in DIVERGENCES else case["expected"]
    assert plain(tokenizer(**call_args(case))) == expected


@pytest.mark.parametrize("name", sorted(KEEP_SPACES_CASES))
def test_encoding_with_space_keeping_model_matches_reference(name: str) -> None:
    case = KEEP_SPACES_CASES[name]
    tokenizer = MLukeTokenizer.from_pretrained(FIXTURES / "keep_spaces", **case["init"])
    assert plain(tokenizer(**call_args(case))) == case["expected"]


def test_divergent_cases_really_differ_from_the_reference() -> None:
    # the fixes above must change something, or they are not fixes
    for name, corrected in DIVERGENCES.items():
        assert corrected() != CASES[name]["expected"], name


def test_batch_encode_plus_takes_transformers_pair_layout() -> None:
    tokenizer = MLukeTokenizer.from_pretrained(FIXTURES, max_mention_length=8)
    case = CASES["batch_pairs"]
    args = call_args(case)
    encoded = tokenizer.batch_encode_plus(
        list(zip(args["text"], args["text_pair"])),
        list(zip(args["entity_spans"], args["entity_spans_pair"])),
        list(zip(args["entities"], args["entities_pair"])),
        padding=True,
        return_token_type_ids=True,
    )
    assert plain(encoded) == case["expected"]


@pytest.mark.parametrize("index", range(len(REFERENCE["decode"])))
def test_tokenize_and_decode_match_reference(tokenizer: MLukeTokenizer, index: int) -> None:
    record = REFERENCE["decode"][index]
    assert getattr(tokenizer, record["method"])(**record["args"]) == record["expected"]


def test_vocabulary_layout_matches_reference(tokenizer: MLukeTokenizer) -> None:
    attributes = REFERENCE["attributes"]
    assert tokenizer.vocab_size == attributes["vocab_size"]
    assert len(tokenizer) == attributes["len"]
    vocab = tokenizer.get_vocab()
    assert len(vocab) == attributes["get_vocab_size"]
    assert {piece: vocab[piece] for piece in attributes["get_vocab_sample"]} == attributes["get_vocab_sample"]
    for name, index in attributes["special_token_ids"].items():
        assert getattr(tokenizer, f"{name}_id") == index, name
    entity_ids = [tokenizer.entity_pad_token_id, tokenizer.entity_unk_token_id, tokenizer.entity_mask_token_id,
                  tokenizer.entity_mask2_token_id]
    assert entity_ids == attributes["entity_special_ids"]
    # the reference lists <ent>/<ent2> twice once reloaded; lamina lists each special token once
    assert tokenizer.all_special_tokens == list(dict.fromkeys(attributes["all_special_tokens"]))
    assert tokenizer.all_special_ids == list(dict.fromkeys(attributes["all_special_ids"]))
    assert tokenizer.model_input_names == attributes["model_input_names"]


def test_truncation_from_the_left_keeps_entities_on_their_words() -> None:
    # the reference cuts entity ids from the left but keeps the first spans' positions; lamina
    # keeps each kept entity on its own mention
    tokenizer = MLukeTokenizer.from_pretrained(FIXTURES, truncation_side="left")
    titles = ["Tokyo", "Japan", "Paris", "France"]
    spans = [(EN.index(title), EN.index(title) + len(title)) for title in titles]
    encoded = tokenizer(EN, entity_spans=spans, entities=titles, truncation=True, max_length=12,
                        max_entity_length=1)
    assert encoded["input_ids"][0] == tokenizer.cls_token_id and len(encoded["input_ids"]) == 12
    assert encoded["entity_ids"] == [tokenizer.entity_vocab["France"]]
    positions = [p for p in encoded["entity_position_ids"][0] if p >= 0]
    assert tokenizer.decode([encoded["input_ids"][p] for p in positions]) == "France"

    whole = tokenizer(EN, entity_spans=spans, entities=titles, truncation=True, max_length=100, max_entity_length=2)
    assert whole["entity_ids"] == [tokenizer.entity_vocab["Paris"], tokenizer.entity_vocab["France"]]
    for row, title in zip(whole["entity_position_ids"], ["Paris", "France"]):
        assert tokenizer.decode([whole["input_ids"][p] for p in row if p >= 0]) == title


def test_markers_surround_the_mentions() -> None:
    pair = MLukeTokenizer.from_pretrained(FIXTURES, task="entity_pair_classification")
    text = "Albert Einstein was born in Ulm and lived in Berlin."
    for head, tail in [((0, 15), (45, 51)), ((45, 51), (0, 15))]:
        encoded = pair(text, entity_spans=[head, tail])
        tokens = pair.convert_ids_to_tokens(encoded["input_ids"])
        for (start, end), marker, row in zip([head, tail], ["<ent>", "<ent2>"], encoded["entity_position_ids"]):
            positions = [p for p in row if p >= 0]
            assert tokens[positions[0]] == marker and tokens[positions[-1]] == marker
            assert pair.decode(encoded["input_ids"][positions[1]:positions[-1]]) == text[start:end]


def test_tensors_and_batch_encoding(tokenizer: MLukeTokenizer) -> None:
    encoded = tokenizer([EN, JA], entity_spans=[[(0, 5)], [(0, 2), (3, 5)]], padding=True, return_tensors="pt")
    assert encoded.entity_position_ids.shape == (2, 2, tokenizer.max_mention_length)
    assert encoded.input_ids.dtype == torch.long
    assert encoded.to("cpu") is encoded
    with pytest.raises(InputError, match="padding"):
        tokenizer([EN, JA], entity_spans=[[(0, 5)], [(0, 2), (3, 5)]], return_tensors="pt")


def test_pad_collates_unpadded_examples(tokenizer: MLukeTokenizer) -> None:
    case = CASES["batch_spans"]
    args = call_args(case)
    padded_tokenizer = MLukeTokenizer.from_pretrained(FIXTURES, **case["init"])
    singles = [padded_tokenizer(text, entity_spans=spans, entities=titles, return_attention_mask=False)
               for text, spans, titles in zip(args["text"], args["entity_spans"], args["entities"])]
    assert plain(padded_tokenizer.pad(singles)) == case["expected"]
    as_columns = {key: [single[key] for single in singles] for key in singles[0]}
    assert plain(padded_tokenizer.pad(as_columns)) == case["expected"]


@pytest.mark.parametrize(
    ("task", "kwargs", "message"),
    [
        (None, {"entity_spans": [(0, 5), (60, 70)]}, r"entity_spans\[1\].*past the end of the text"),
        (None, {"entity_spans": [(5, 2)]}, r"entity_spans\[0\]"),
        (None, {"entity_spans": [(-1, 2)]}, r"entity_spans\[0\]"),
        (None, {"entity_spans": [(0, 5), (6, 8)], "entities": ["Tokyo"]}, "entities has 1 titles but entity_spans"),
        (None, {"entities": ["Tokyo"]}, "without entity_spans"),
        (None, {"entity_spans": [(0, 5)], "entities": [3]}, "entity titles"),
        (None, {"entity_spans": [[0, 5, 7]]}, r"\(start, end\)"),
        (None, {"entity_spans": (0, 5)}, r"entity_spans\[0\]"),
        (None, {"text_pair": JA, "entity_spans_pair": [(0, 2)], "entities_pair": ["a", "b"]},
         "entities_pair has 2 titles but entity_spans_pair has 1"),
        (None, {"entity_spans_pair": [(0, 2)]}, "without text_pair"),
        ("entity_classification", {"entity_spans": [(0, 5), (6, 8)]}, "exactly 1 span, found 2"),
        ("entity_classification", {}, "needs entity_spans"),
        ("entity_pair_classification", {"entity_spans": [(0, 5)]}, "exactly 2 spans, found 1"),
        ("entity_pair_classification", {"entity_spans": [(0, 8), (6, 12)]}, "overlap"),
        ("entity_span_classification", {"entity_spans": []}, "at least one span"),
        ("entity_classification", {"entity_spans": [(0, 5)], "text_pair": JA}, "cannot use text_pair"),
        ("entity_classification", {"entity_spans": [(0, 5)], "entities": ["Tokyo"]}, "cannot use entities"),
    ],
)
def test_misuse_is_a_clear_error(task: str | None, kwargs: dict, message: str) -> None:
    tokenizer = MLukeTokenizer.from_pretrained(FIXTURES, task=task)
    with pytest.raises(TokenizerError, match=message):
        tokenizer(EN, **kwargs)


def test_batch_misuse_is_a_clear_error(tokenizer: MLukeTokenizer) -> None:
    with pytest.raises(TokenizerError, match="a batch of 2 texts needs a list of 2, found 1"):
        tokenizer([EN, JA], entity_spans=[[(0, 5)]])
    with pytest.raises(TokenizerError, match=r"entity_spans\[0\].*past the end"):
        tokenizer([EN, JA], entity_spans=[[(0, 5)], [(0, 50)]])
    with pytest.raises(TokenizerError, match="text"):
        tokenizer([EN, 3])


def test_unsupported_options_are_refused(tokenizer: MLukeTokenizer) -> None:
    classifier = MLukeTokenizer.from_pretrained(FIXTURES, task="entity_classification")
    with pytest.raises(InputError, match="return_overflowing_tokens"):
        classifier([EN], entity_spans=[[(0, 5)]], return_overflowing_tokens=True, truncation=True, max_length=5)
    with pytest.raises(InputError, match="is_split_into_words"):
        tokenizer(["Tokyo", "is"], entity_spans=[(0, 5)], is_split_into_words=True)
    with pytest.raises(InputError, match="not_an_option"):
        tokenizer(EN, not_an_option=1)
    with pytest.raises(InputError, match="truncation"):
        tokenizer(EN, truncation="sideways", max_length=4)
    with pytest.raises(InputError, match="entities"):
        # only_second cannot drop entities from the second text when it has none
        tokenizer(EN, JA, entity_spans=[(0, 5), (6, 8)], truncation="only_second", max_length=100,
                  max_entity_length=1)


def test_bad_files_are_clear_errors(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "sentencepiece.bpe.model", tmp_path)
    (tmp_path / "entity_vocab.json").write_text(json.dumps({"[PAD]": 0, "[UNK]": 1, "[MASK]": 2}))
    with pytest.raises(TokenizerError, match=r"entity_mask2_token='\[MASK2\]' is not in the entity vocabulary"):
        MLukeTokenizer.from_pretrained(tmp_path)
    (tmp_path / "entity_vocab.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="entity_vocab.json: cannot read the entity vocabulary"):
        MLukeTokenizer.from_pretrained(tmp_path)
    (tmp_path / "entity_vocab.json").write_text(json.dumps(["[PAD]"]))
    with pytest.raises(TokenizerError, match="JSON object mapping entity titles"):
        MLukeTokenizer.from_pretrained(tmp_path)
    shutil.copy(FIXTURES / "entity_vocab.json", tmp_path)
    (tmp_path / "sentencepiece.bpe.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a readable sentencepiece model"):
        MLukeTokenizer.from_pretrained(tmp_path)
    with pytest.raises(TokenizerError, match="task"):
        MLukeTokenizer.from_pretrained(FIXTURES, task="entity_typing")
    with pytest.raises(TokenizerError, match="out of range"):
        MLukeTokenizer.from_pretrained(FIXTURES).decode([0, 10_000])


def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    original = MLukeTokenizer.from_pretrained(FIXTURES, task="entity_span_classification", max_mention_length=6)
    written = original.save_pretrained(tmp_path / "saved")
    names = sorted(Path(path).name for path in written)
    assert names == ["added_tokens.json", "entity_vocab.json", "sentencepiece.bpe.model", "special_tokens_map.json",
                     "tokenizer_config.json"]
    reloaded = MLukeTokenizer.from_pretrained(tmp_path / "saved")
    assert reloaded.task == "entity_span_classification" and reloaded.max_mention_length == 6
    assert reloaded.get_vocab() == original.get_vocab()
    assert reloaded.entity_vocab == original.entity_vocab
    case = CASES["esc_batch_padded"]
    assert plain(reloaded(**call_args(case))) == case["expected"]
    # the mask token still takes the space before it after the round trip
    assert reloaded.tokenize("the <mask>") == original.tokenize("the <mask>") == ["▁t", "he", "<mask>"]


def test_loads_from_vocabulary_files_alone(tmp_path: Path) -> None:
    for name in ("sentencepiece.bpe.model", "entity_vocab.json"):
        shutil.copy(FIXTURES / name, tmp_path)
    bare = MLukeTokenizer.from_pretrained(tmp_path)
    direct = MLukeTokenizer(tmp_path / "sentencepiece.bpe.model", tmp_path / "entity_vocab.json")
    for tokenizer in (bare, direct):
        assert tokenizer.get_vocab() == MLukeTokenizer.from_pretrained(FIXTURES).get_vocab()
        case = CASES["spans_with_entities"]
        assert plain(tokenizer(**call_args(case))) == case["expected"]


def test_save_vocabulary(tmp_path: Path, tokenizer: MLukeTokenizer) -> None:
    sp_path, entity_path = tokenizer.save_vocabulary(tmp_path, filename_prefix="mine")
    assert Path(sp_path).name == "mine-sentencepiece.bpe.model"
    assert Path(sp_path).read_bytes() == (FIXTURES / "sentencepiece.bpe.model").read_bytes()
    assert json.loads(Path(entity_path).read_text(encoding="utf-8")) == tokenizer.entity_vocab
    # the model file is gone: the vocabulary is written from the loaded model instead
    moved = pickle.loads(pickle.dumps(tokenizer))
    moved.vocab_file = str(tmp_path / "missing.model")
    sp_path, _ = moved.save_vocabulary(tmp_path / "..", filename_prefix=tmp_path.name + "-again")
    assert MLukeTokenizer(sp_path, entity_path).get_vocab() == tokenizer.get_vocab()
    with pytest.raises(TokenizerError, match="not a directory"):
        tokenizer.save_vocabulary(tmp_path / "nowhere")


def test_pickle_keeps_behaviour(tokenizer: MLukeTokenizer) -> None:
    case = CASES["multilingual_ja"]
    assert plain(pickle.loads(pickle.dumps(tokenizer))(**call_args(case))) == case["expected"]


def test_additional_special_tokens_do_not_replace_the_markers() -> None:
    # the reference takes its markers from additional_special_tokens[0:2], so extra tokens there
    # would become the markers; lamina always uses entity_token_1 / entity_token_2
    tokenizer = MLukeTokenizer.from_pretrained(FIXTURES, task="entity_classification",
                                               additional_special_tokens=["<extra>"])
    plain_tokenizer = MLukeTokenizer.from_pretrained(FIXTURES, task="entity_classification")
    assert tokenizer.convert_tokens_to_ids("<extra>") == len(plain_tokenizer)
    assert tokenizer.tokenize("a<extra>b")[1] == "<extra>"
    encoded = tokenizer(EN, entity_spans=[(0, 5)])
    assert encoded == plain_tokenizer(EN, entity_spans=[(0, 5)])
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][:3]) == ["<s>", "<ent>", "▁T"]


def test_encode_and_integer_like_spans(tokenizer: MLukeTokenizer) -> None:
    case = CASES["spans_with_entities"]
    args = call_args(case)
    assert tokenizer.encode(EN) == CASES["plain"]["expected"]["input_ids"]
    # spans read from arrays hold numpy integers, not ints
    numpy_spans = [tuple(torch.tensor(span).numpy()) for span in args["entity_spans"]]
    assert tokenizer(EN, entity_spans=numpy_spans, entities=args["entities"]) == case["expected"]


def test_batch_with_spans_for_some_texts_only(tokenizer: MLukeTokenizer) -> None:
    some = tokenizer([EN, JA, EN], entity_spans=[[(0, 5)], None, None], padding=True, return_tensors="pt")
    empty = tokenizer([EN, JA, EN], entity_spans=[[(0, 5)], [], []], padding=True, return_tensors="pt")
    assert plain(some) == plain(empty)
    assert some["entity_attention_mask"].tolist() == [[1], [0], [0]]


def test_a_bare_max_length_truncates_only_without_padding(tokenizer: MLukeTokenizer) -> None:
    """The reference cuts to a `max_length` given without `truncation` only while `padding` is
    False (its recorded cases show both sides); MLuke takes the rule from the base tokenizer."""
    cut, kept = CASES["implicit_truncation_by_max_length"], CASES["pad_to_multiple_of_max_length"]
    assert len(cut["expected"]["input_ids"]) == cut["args"]["max_length"]
    assert len(kept["expected"]["input_ids"]) > kept["args"]["max_length"]
    whole = len(tokenizer(EN)["input_ids"])
    assert len(tokenizer(EN, max_length=8)["input_ids"]) == 8
    for padding in (True, "longest", "max_length", "do_not_pad"):
        assert len(tokenizer(EN, max_length=8, padding=padding)["input_ids"]) == whole, padding
    assert len(tokenizer(EN, max_length=8, padding=True, truncation=True)["input_ids"]) == 8
