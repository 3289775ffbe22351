"""Record reference outputs of transformers 4.x's sentencepiece MLukeTokenizer for lamina's tests.

Run with an environment that has ``transformers==4.46.3``, ``sentencepiece`` and ``torch``::

    /work/venv4/bin/python scripts/record_mluke_fixtures.py [--retrain]

It writes into ``tests/fixtures/mluke/``:

- ``sentencepiece.bpe.model``: a tiny unigram model trained on the multilingual corpus below. It is
  committed, so the tests never depend on sentencepiece training being reproducible; it is only
  (re)trained when missing or with ``--retrain``.
- ``entity_vocab.json``: plain titles and ``lang:title`` keys plus the four special entities.
- ``tokenizer_config.json``, ``special_tokens_map.json``, ``added_tokens.json``: what the reference's
  ``save_pretrained`` writes, so lamina is tested on a directory in the reference's own layout.
- ``reference_outputs.json``: one record per call (constructor kwargs, method, arguments, result).
- ``keep_spaces/``: the same files for a model trained to keep repeated and trailing spaces, so
  that where the text is cut around entity spans changes the ids; a subset of the cases uses it.

transformers 5.x cannot serve as the reference: it maps the words of a sentencepiece model that is
not XLM-R's own to ``<unk>``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
import transformers
from transformers import MLukeTokenizer

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mluke"
# a second model that keeps spaces, recorded over the cases where cutting the text at spans shows
KEEP_SPACES = "keep_spaces"
KEEP_SPACES_CASES = ("spans_", "multilingual_", "pair_both", "unknown_chars", "ec_", "epc_", "esc_single", "long_")

CORPUS = """\
Tokyo is the capital of Japan and the largest city in the country.
Paris is the capital and most populous city of France.
Berlin is the capital of Germany; it lies on the river Spree.
The quick brown fox jumps over the lazy dog near the river bank.
Albert Einstein was born in Ulm and worked in Bern and Berlin.
Marie Curie was a physicist and chemist who lived in Paris.
Beyoncé lives in Los Angeles, and she has won many awards.
Paris est la capitale de la France et la ville la plus peuplée.
Tokyo est la capitale du Japon, une ville très grande.
Berlin ist die Hauptstadt von Deutschland und liegt an der Spree.
Die Universität in München ist sehr alt und berühmt.
Madrid es la capital de España y la ciudad más grande del país.
Lionel Messi nació en Rosario, Argentina, y jugó en Barcelona.
東京は日本の首都であり、最大の都市です。
パリはフランスの首都です。
アインシュタインはドイツで生まれた物理学者です。
Roma è la capitale d'Italia e una città molto antica.
Amsterdam is de hoofdstad van Nederland.
Lisboa é a capital de Portugal e fica no rio Tejo.
""".splitlines()

ENTITY_TITLES = [
    "Tokyo", "Japan", "Paris", "France", "Berlin", "Germany", "Albert Einstein", "Marie Curie",
    "Los Angeles", "Beyoncé", "Spree",
    "en:Tokyo", "en:Japan", "en:Paris", "en:France", "en:Albert Einstein", "en:Los Angeles",
    "ja:東京", "ja:日本", "ja:パリ", "fr:Paris", "fr:France", "de:Berlin", "de:Deutschland",
    "es:Madrid", "es:España",
]  # fmt: skip

EN = "Tokyo is the capital of Japan and Paris is the capital of France."
EN_PAIR = "Albert Einstein was born in Ulm and lived in Berlin."
FR = "Paris est la capitale de la France."
JA = "東京は日本の首都です。"
DE = "Berlin ist die Hauptstadt von Deutschland."
UNKNOWN_CHARS = "Αθήνα is in Ελλάδα, far from Tokyo."
BEYONCE = "Beyoncé lives in Los Angeles."


def span(text: str, mention: str, occurrence: int = 0) -> tuple[int, int]:
    """The character span ``(start, end)`` of the ``occurrence``-th ``mention`` in ``text``."""
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(mention, start + 1)
    return (start, start + len(mention))


def build_sentencepiece(path: Path, keep_spaces: bool) -> None:
    """Train the tiny unigram model; identity normalisation keeps the file a few KB.

    `keep_spaces` keeps repeated and trailing spaces as pieces, so where the text is cut at
    entity spans (a space goes with the word after it) shows in the ids.
    """
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "sp"
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS * 3),
            model_prefix=str(prefix),
            vocab_size=300,
            model_type="unigram",
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=not keep_spaces,
            num_threads=1,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        shutil.copyfile(f"{prefix}.model", path)


def build_entity_vocab(path: Path) -> None:
    """Special entities first, as in mLUKE's own vocabulary, then plain and ``lang:title`` keys."""
    names = ["[PAD]", "[UNK]", "[MASK]", "[MASK2]", *ENTITY_TITLES]
    path.write_text(json.dumps({name: index for index, name in enumerate(names)}, ensure_ascii=False, indent=1))


def to_jsonable(value: Any) -> Any:
    """Tensors become ``{"tensor": dtype, "data": nested list}``; tuples become lists."""
    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch."), "data": value.tolist()}
    if isinstance(value, dict) or hasattr(value, "items"):
        return {key: to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    return value


def encode_cases() -> list[tuple[str, dict, dict]]:
    """(case name, constructor kwargs, __call__ kwargs) for every encoding the tests compare."""
    en_spans = [span(EN, "Tokyo"), span(EN, "Japan"), span(EN, "Paris"), span(EN, "France")]
    pair_spans = [span(EN_PAIR, "Albert Einstein"), span(EN_PAIR, "Berlin")]
    ja_spans = [span(JA, "東京"), span(JA, "日本")]
    fr_spans = [span(FR, "Paris"), span(FR, "France")]
    de_spans = [span(DE, "Berlin"), span(DE, "Deutschland")]
    long_mention = span(EN, "Tokyo is the capital of Japan")
    nested = [span(EN, "Tokyo is the capital"), span(EN, "capital"), span(EN, "capital", 1)]
    at_ends = [(0, 5), span(EN, "France.")]
    cases = [
        ("plain", {}, {"text": EN}),
        ("plain_unknown_chars", {}, {"text": UNKNOWN_CHARS}),
        ("plain_accents", {}, {"text": BEYONCE}),
        ("mask_and_marker_tokens", {}, {"text": "Tokyo is the <mask> of <ent>Japan<ent2> .</s>"}),
        ("spans_masked", {}, {"text": EN, "entity_spans": en_spans}),
        ("spans_with_entities", {}, {
            "text": EN, "entity_spans": en_spans, "entities": ["Tokyo", "en:Japan", "Paris", "Unknown title"]}),
        ("spans_at_text_ends", {}, {"text": EN, "entity_spans": at_ends, "entities": ["Tokyo", "France"]}),
        ("spans_nested", {}, {"text": EN, "entity_spans": nested}),
        ("spans_empty", {}, {"text": EN, "entity_spans": [], "entities": []}),
        ("multilingual_ja", {}, {"text": JA, "entity_spans": ja_spans, "entities": ["ja:東京", "ja:日本"]}),
        ("multilingual_fr", {}, {"text": FR, "entity_spans": fr_spans, "entities": ["fr:Paris", "fr:France"]}),
        ("multilingual_accents", {}, {
            "text": BEYONCE, "entity_spans": [span(BEYONCE, "Beyoncé"), span(BEYONCE, "Los Angeles")],
            "entities": ["Beyoncé", "en:Los Angeles"]}),
        ("unknown_chars_spans", {}, {
            "text": UNKNOWN_CHARS, "entity_spans": [span(UNKNOWN_CHARS, "Αθήνα"), span(UNKNOWN_CHARS, "Tokyo")]}),
        ("pair_plain", {}, {"text": EN, "text_pair": EN_PAIR}),
        ("pair_both_entities", {}, {
            "text": EN, "text_pair": EN_PAIR, "entity_spans": en_spans[:2], "entities": ["Tokyo", "Japan"],
            "entity_spans_pair": pair_spans, "entities_pair": ["en:Albert Einstein", "Berlin"]}),
        ("pair_second_entities_only", {}, {"text": FR, "text_pair": DE, "entity_spans_pair": de_spans,
                                           "entities_pair": ["de:Berlin", "de:Deutschland"]}),
        # lamina gives "pair_second_entities_only" the entities the reference only keeps with empty first spans
        ("pair_second_entities_only_empty_first", {}, {
            "text": FR, "text_pair": DE, "entity_spans": [], "entity_spans_pair": de_spans,
            "entities_pair": ["de:Berlin", "de:Deutschland"]}),
        ("pair_first_entities_masked", {}, {"text": JA, "text_pair": FR, "entity_spans": ja_spans}),
        ("token_type_ids", {}, {"text": EN, "text_pair": EN_PAIR, "entity_spans": en_spans,
                                "entity_spans_pair": pair_spans, "return_token_type_ids": True}),
        ("special_tokens_mask_and_length", {}, {"text": EN, "text_pair": FR, "entity_spans": en_spans[:1],
                                                "return_special_tokens_mask": True, "return_length": True}),
        ("no_special_tokens", {}, {"text": EN, "text_pair": FR, "entity_spans": en_spans,
                                   "entity_spans_pair": fr_spans, "add_special_tokens": False}),
        ("no_attention_mask", {}, {"text": EN, "entity_spans": en_spans, "return_attention_mask": False}),
        ("long_mention", {"max_mention_length": 4}, {"text": EN, "entity_spans": [long_mention, en_spans[2]]}),
        ("truncate_words_drops_entities", {}, {"text": EN, "entity_spans": en_spans, "truncation": True,
                                               "max_length": 14}),
        ("implicit_truncation_by_max_length", {}, {"text": EN, "entity_spans": en_spans, "max_length": 20}),
        ("truncate_entities", {}, {"text": EN, "entity_spans": en_spans, "entities": ["Tokyo", "Japan", "Paris",
                                   "France"], "truncation": True, "max_length": 100, "max_entity_length": 2}),
        ("truncate_entities_by_init", {"max_entity_length": 3}, {
            "text": EN, "entity_spans": en_spans, "truncation": True, "max_length": 100}),
        ("entities_not_truncated_without_truncation", {"max_entity_length": 3}, {
            "text": EN, "entity_spans": en_spans}),
        ("truncate_entities_model_max_length", {"model_max_length": 64, "max_entity_length": 2}, {
            "text": EN, "entity_spans": en_spans, "truncation": True}),
        ("pair_truncate_longest_first", {}, {
            "text": EN, "text_pair": EN_PAIR, "entity_spans": en_spans, "entity_spans_pair": pair_spans,
            "truncation": "longest_first", "max_length": 30, "max_entity_length": 3}),
        ("pair_truncate_only_first", {}, {
            "text": EN, "text_pair": EN_PAIR, "entity_spans": en_spans, "entity_spans_pair": pair_spans,
            "truncation": "only_first", "max_length": 40, "max_entity_length": 5}),
        ("pair_truncate_only_second", {}, {
            "text": EN, "text_pair": EN_PAIR, "entity_spans": en_spans, "entity_spans_pair": pair_spans,
            "truncation": "only_second", "max_length": 36, "max_entity_length": 5}),
        ("pair_truncate_only_second_entities", {}, {
            "text": EN, "text_pair": EN_PAIR, "entity_spans": en_spans, "entity_spans_pair": pair_spans,
            "truncation": "only_second", "max_length": 100, "max_entity_length": 5}),
        ("pad_max_length", {"max_mention_length": 6}, {
            "text": EN, "entity_spans": en_spans[:2], "padding": "max_length", "max_length": 40,
            "max_entity_length": 5}),
        ("pad_max_length_default_entity_length", {"max_mention_length": 3}, {
            "text": JA, "entity_spans": ja_spans, "padding": "max_length", "max_length": 20}),
        ("pad_left_single", {"padding_side": "left", "max_mention_length": 5}, {
            "text": JA, "entity_spans": ja_spans, "padding": "max_length", "max_length": 20,
            "max_entity_length": 4}),
        ("pad_to_multiple_of", {"max_mention_length": 5}, {
            "text": EN, "entity_spans": en_spans[:3], "padding": True, "pad_to_multiple_of": 8}),
        ("pad_to_multiple_of_max_length", {"max_mention_length": 5}, {
            "text": FR, "entity_spans": fr_spans, "padding": "max_length", "max_length": 10,
            "max_entity_length": 3, "pad_to_multiple_of": 4}),
        ("tensors_single", {}, {"text": EN, "entity_spans": en_spans, "return_tensors": "pt",
                                "return_token_type_ids": True}),
        ("tensors_single_no_entities", {}, {"text": EN, "return_tensors": "pt"}),
        # batches
        ("batch_plain", {}, {"text": [EN, JA, FR], "padding": True}),
        ("batch_spans", {"max_mention_length": 8}, {
            "text": [EN, JA, FR], "entity_spans": [en_spans, ja_spans, fr_spans[:1]],
            "entities": [["Tokyo", "Japan", "Paris", "France"], ["ja:東京", "ja:日本"], ["fr:Paris"]],
            "padding": True}),
        ("batch_spans_unpadded", {"max_mention_length": 8}, {
            "text": [EN, JA], "entity_spans": [en_spans, ja_spans]}),
        ("batch_pairs", {"max_mention_length": 8}, {
            "text": [EN, FR], "text_pair": [EN_PAIR, DE], "entity_spans": [en_spans[:2], fr_spans],
            "entity_spans_pair": [pair_spans, de_spans], "entities": [["Tokyo", "en:Japan"], ["fr:Paris", "France"]],
            "entities_pair": [["Albert Einstein", "Berlin"], ["de:Berlin", "de:Deutschland"]], "padding": True,
            "return_token_type_ids": True}),
        ("batch_pairs_truncated", {"max_mention_length": 8}, {
            "text": [EN, FR], "text_pair": [EN_PAIR, DE], "entity_spans": [en_spans, fr_spans],
            "entity_spans_pair": [pair_spans, de_spans], "padding": "max_length", "truncation": True,
            "max_length": 32, "max_entity_length": 3}),
        ("batch_pad_max_length_tensors", {"max_mention_length": 4, "max_entity_length": 6}, {
            "text": [EN, JA], "entity_spans": [en_spans, ja_spans], "padding": "max_length", "max_length": 40,
            "return_tensors": "pt"}),
        ("batch_left_padding", {"max_mention_length": 6}, {
            "text": [EN, JA], "entity_spans": [en_spans[:1], ja_spans], "padding": True, "padding_side": "left",
            "return_token_type_ids": True, "return_special_tokens_mask": True, "return_length": True}),
        ("batch_pad_to_multiple_of_tensors", {"max_mention_length": 4}, {
            "text": [FR, JA], "entity_spans": [fr_spans, ja_spans[:1]], "padding": True, "pad_to_multiple_of": 8,
            "return_tensors": "pt"}),
        # tasks
        ("ec_single", {"task": "entity_classification"}, {"text": EN, "entity_spans": [span(EN, "Japan")]}),
        ("ec_at_start", {"task": "entity_classification"}, {"text": EN, "entity_spans": [(0, 5)]}),
        ("ec_at_end", {"task": "entity_classification"}, {"text": EN, "entity_spans": [span(EN, "France.")]}),
        ("ec_ja", {"task": "entity_classification"}, {"text": JA, "entity_spans": [span(JA, "日本")]}),
        ("ec_batch_tensors", {"task": "entity_classification"}, {
            "text": [EN, JA, BEYONCE], "entity_spans": [[span(EN, "Paris")], [span(JA, "東京")],
                                                        [span(BEYONCE, "Los Angeles")]],
            "padding": True, "return_tensors": "pt", "return_token_type_ids": True}),
        ("ec_truncated", {"task": "entity_classification"}, {
            "text": EN, "entity_spans": [span(EN, "France")], "truncation": True, "max_length": 12}),
        ("epc_head_first", {"task": "entity_pair_classification"}, {
            "text": EN_PAIR, "entity_spans": [span(EN_PAIR, "Albert Einstein"), span(EN_PAIR, "Berlin")]}),
        ("epc_tail_first", {"task": "entity_pair_classification"}, {
            "text": EN_PAIR, "entity_spans": [span(EN_PAIR, "Berlin"), span(EN_PAIR, "Albert Einstein")]}),
        ("epc_adjacent", {"task": "entity_pair_classification"}, {
            "text": EN, "entity_spans": [span(EN, "Tokyo"), span(EN, " is")]}),
        ("epc_multilingual", {"task": "entity_pair_classification"}, {
            "text": JA, "entity_spans": [span(JA, "日本"), span(JA, "東京")]}),
        ("epc_batch", {"task": "entity_pair_classification", "max_mention_length": 10}, {
            "text": [EN, DE], "entity_spans": [[span(EN, "Paris"), span(EN, "Tokyo")],
                                               [span(DE, "Berlin"), span(DE, "Deutschland")]],
            "padding": "max_length", "max_length": 24, "truncation": True, "return_tensors": "pt"}),
        ("esc_single", {"task": "entity_span_classification"}, {"text": EN, "entity_spans": en_spans + nested}),
        ("esc_ja", {"task": "entity_span_classification", "max_mention_length": 6}, {
            "text": JA, "entity_spans": [(0, 1), (0, 2), (1, 2), (3, 5), (3, 8)]}),
        ("esc_batch_padded", {"task": "entity_span_classification", "max_mention_length": 6}, {
            "text": [EN, FR], "entity_spans": [en_spans, fr_spans[:1]], "padding": True,
            "return_token_type_ids": True}),
        ("esc_batch_tensors", {"task": "entity_span_classification", "max_mention_length": 6}, {
            "text": [JA, DE], "entity_spans": [ja_spans, de_spans], "padding": "max_length", "max_length": 24,
            "max_entity_length": 4, "return_tensors": "pt"}),
        ("esc_pad_left", {"task": "entity_span_classification", "max_mention_length": 4,
                          "padding_side": "left"}, {
            "text": [EN, FR], "entity_spans": [en_spans[:3], fr_spans[:1]], "padding": True}),
        ("esc_truncated", {"task": "entity_span_classification", "max_entity_length": 3}, {
            "text": EN, "entity_spans": en_spans, "truncation": True, "max_length": 18}),
        ("esc_pad_single_max_length", {"task": "entity_span_classification", "max_mention_length": 3,
                                       "max_entity_length": 5}, {
            "text": FR, "entity_spans": fr_spans, "padding": "max_length", "max_length": 16}),
    ]  # fmt: skip
    return cases


def decode_cases(tokenizer: MLukeTokenizer) -> list[dict]:
    """Records for tokenize / convert_ids_to_tokens / decode / batch_decode."""
    records = []
    texts = [EN, JA, FR, UNKNOWN_CHARS, BEYONCE, "Tokyo is the <mask> of <ent>Japan<ent2> .</s>",
             "  leading and   inner spaces ", "Don't stop , it 's fine !", ""]
    for text in texts:
        records.append({"method": "tokenize", "args": {"text": text}, "expected": tokenizer.tokenize(text)})
    ec = MLukeTokenizer.from_pretrained(FIXTURE_DIR, task="entity_pair_classification")
    pair_ids = ec(EN_PAIR, entity_spans=[span(EN_PAIR, "Berlin"), span(EN_PAIR, "Albert Einstein")])["input_ids"]
    id_lists = [
        tokenizer(EN, FR)["input_ids"],
        tokenizer(JA)["input_ids"],
        tokenizer(UNKNOWN_CHARS)["input_ids"],
        tokenizer("Don't stop , it 's fine !")["input_ids"],
        tokenizer("Tokyo is the <mask> of <ent>Japan<ent2> .")["input_ids"],
        pair_ids,
        [tokenizer.pad_token_id, tokenizer.mask_token_id, 3, 4, 5, tokenizer.vocab_size - 2],
    ]
    for ids in id_lists:
        records.append({"method": "convert_ids_to_tokens", "args": {"ids": ids},
                        "expected": tokenizer.convert_ids_to_tokens(ids)})
        records.append({"method": "convert_ids_to_tokens", "args": {"ids": ids, "skip_special_tokens": True},
                        "expected": tokenizer.convert_ids_to_tokens(ids, skip_special_tokens=True)})
        for options in ({}, {"skip_special_tokens": True}, {"clean_up_tokenization_spaces": True},
                        {"spaces_between_special_tokens": False}):
            records.append({"method": "decode", "args": {"token_ids": ids, **options},
                            "expected": tokenizer.decode(ids, **options)})
    records.append({"method": "batch_decode", "args": {"sequences": id_lists[:3], "skip_special_tokens": True},
                    "expected": tokenizer.batch_decode(id_lists[:3], skip_special_tokens=True)})
    tokens = tokenizer.tokenize(EN) + ["<mask>", "<ent>", "▁not-a-piece", "<unk>", "<pad>"]
    records.append({"method": "convert_tokens_to_ids", "args": {"tokens": tokens},
                    "expected": tokenizer.convert_tokens_to_ids(tokens)})
    records.append({"method": "convert_tokens_to_string", "args": {"tokens": tokens},
                    "expected": tokenizer.convert_tokens_to_string(tokens)})
    return records


def record(tokenizer_dir: Path) -> dict:
    base = MLukeTokenizer.from_pretrained(tokenizer_dir)
    vocab = base.get_vocab()
    attributes = {
        "vocab_size": base.vocab_size,
        "len": len(base),
        "get_vocab_size": len(vocab),
        "get_vocab_sample": {piece: vocab[piece] for piece in ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<ent>",
                                                                "<ent2>", "▁capital", "東", "."]},
        "special_token_ids": {name: getattr(base, f"{name}_id") for name in
                              ["bos_token", "eos_token", "sep_token", "cls_token", "unk_token", "pad_token",
                               "mask_token"]},
        "entity_special_ids": [base.entity_pad_token_id, base.entity_unk_token_id, base.entity_mask_token_id,
                               base.entity_mask2_token_id],
        "all_special_ids": base.all_special_ids,
        "all_special_tokens": base.all_special_tokens,
        "model_input_names": base.model_input_names,
    }
    return {
        "transformers_version": transformers.__version__,
        "attributes": attributes,
        "encode": record_encodings(tokenizer_dir, encode_cases()),
        "decode": decode_cases(base),
        "encode_keep_spaces": record_encodings(tokenizer_dir / KEEP_SPACES, [
            case for case in encode_cases() if case[0].startswith(KEEP_SPACES_CASES)]),
    }


def record_encodings(tokenizer_dir: Path, cases: list[tuple[str, dict, dict]]) -> list[dict]:
    records = []
    for name, init, call in cases:
        tokenizer = MLukeTokenizer.from_pretrained(tokenizer_dir, **init)
        records.append({"name": name, "init": init, "args": to_jsonable(call),
                        "expected": to_jsonable(tokenizer(**call))})
    return records


def build_tokenizer_dir(directory: Path, retrain: bool, keep_spaces: bool) -> None:
    """The committed sentencepiece model (trained if missing), the entity vocabulary, and the
    config files the reference's own `save_pretrained` writes."""
    directory.mkdir(parents=True, exist_ok=True)
    sp_path = directory / "sentencepiece.bpe.model"
    if retrain or not sp_path.exists():
        build_sentencepiece(sp_path, keep_spaces)
    entity_vocab_path = directory / "entity_vocab.json"
    build_entity_vocab(entity_vocab_path)
    with tempfile.TemporaryDirectory() as tmp:
        MLukeTokenizer(str(sp_path), str(entity_vocab_path)).save_pretrained(tmp)
        for saved in Path(tmp).iterdir():
            if saved.name != sp_path.name:
                shutil.copyfile(saved, directory / saved.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrain", action="store_true", help="retrain the committed sentencepiece model")
    args = parser.parse_args()
    build_tokenizer_dir(FIXTURE_DIR, args.retrain, keep_spaces=False)
    build_tokenizer_dir(FIXTURE_DIR / KEEP_SPACES, args.retrain, keep_spaces=True)
    outputs = record(FIXTURE_DIR)
    (FIXTURE_DIR / "reference_outputs.json").write_text(json.dumps(outputs, ensure_ascii=False, indent=None) + "\n")
    total = sum(path.stat().st_size for path in FIXTURE_DIR.rglob("*") if path.is_file())
    print(f"wrote {len(outputs['encode'])} + {len(outputs['encode_keep_spaces'])} encode and "
          f"{len(outputs['decode'])} decode records; {total} bytes")


if __name__ == "__main__":
    main()
