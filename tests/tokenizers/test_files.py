"""Loading and saving: what each file kind gives, save_pretrained output that transformers and
lamina load back, and bad input raising TokenizerError naming the file and the problem."""

from __future__ import annotations

import json
import shutil

import pytest

import lamina
from lamina.errors import InputError, TokenizerError
from lamina.tokenizers import AutoTokenizer, LlamaTokenizer, PersimmonTokenizer
from tests.tokenizers.corpus import corpus

transformers = pytest.importorskip("transformers")

TEXTS = [t for t in corpus(120) if "  " not in " " + t.replace("\n", " ").replace("\t", " ")][:40]


def test_sentencepiece_save_loads_in_transformers(lamina_mistral, tmp_path):
    pytest.importorskip("google.protobuf")
    ours = lamina_mistral["v3"]
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["add_bos_token"] is True
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert type(again) is LlamaTokenizer and again.padding_side == "left"
    expected = ours(TEXTS)["input_ids"]
    assert again(TEXTS)["input_ids"] == expected
    assert theirs(TEXTS)["input_ids"] == expected


def test_tekken_save_loads_in_transformers(lamina_mistral, reference_mistral, tmp_path):
    ours = lamina_mistral["tekken"]
    ours.save_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(tmp_path)
    texts = corpus(100)
    expected = [reference_mistral["tekken"].instruct_tokenizer.tokenizer.encode(t, bos=True, eos=False) for t in texts]
    assert again(texts, split_special_tokens=True)["input_ids"] == expected
    assert theirs(texts, split_special_tokens=True)["input_ids"] == expected
    assert theirs.decode(expected[5], skip_special_tokens=True) == ours.decode(expected[5], skip_special_tokens=True)


def test_persimmon_unigram_model(tmp_path):
    sentencepiece = pytest.importorskip("sentencepiece")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(400, seed=2) * 2),
        model_prefix=str(tmp_path / "tokenizer"),
        model_type="unigram",
        vocab_size=600,
        hard_vocab_limit=False,
        user_defined_symbols=["|ENDOFTEXT|"],
        byte_fallback=True,
        character_coverage=0.995,
        minloglevel=2,
    )
    reference = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    tok = PersimmonTokenizer.from_pretrained(tmp_path)
    end = reference.piece_to_id("|ENDOFTEXT|")
    assert tok.bos_token == tok.eos_token == "|ENDOFTEXT|" and tok.bos_token_id == end
    texts = corpus(120)
    # "<s>" typed in the text is a control token to lamina (as to transformers), text to sentencepiece
    assert tok(texts, split_special_tokens=True)["input_ids"] == [[end, *ids] for ids in reference.encode(texts)]
    assert tok.batch_decode(reference.encode(texts)) == reference.decode(reference.encode(texts))
    assert tok.encode("a|ENDOFTEXT|b", add_special_tokens=False) == reference.encode("a|ENDOFTEXT|b")
    # Adept's prompt is Persimmon's default chat template
    chat = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == "human: hi\n\nadept:"
    # transformers cannot convert a unigram model itself: lamina also writes its tokenizer.json
    tok.save_pretrained(tmp_path / "saved")
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    plain = [t for t in texts if not any(s in t for s in ("<s>", "</s>", "<unk>"))]
    expected = tok(plain)["input_ids"]
    assert theirs(plain)["input_ids"] == again(plain)["input_ids"] == expected
    assert theirs.batch_decode(expected) == tok.batch_decode(expected)


def test_configuration_files_are_honoured(lamina_mistral, mistral_dirs, tmp_path):
    shutil.copyfile(mistral_dirs["v3"] / "tokenizer.model", tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizerFast",
                "add_bos_token": True,
                "add_eos_token": True,
                "model_max_length": 16,
                "padding_side": "right",
                "pad_token": {"content": "</s>", "special": True},
                "chat_template": [{"name": "default", "template": "D"}, {"name": "rag", "template": "R"}],
            }
        )
    )
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": ["[TOOL_CALLS]"]}))
    tok = lamina.AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(tok, lamina.LlamaTokenizerFast)
    assert tok.padding_side == "right" and tok.model_max_length == 16 and tok.pad_token == "</s>"
    ids = tok("hello [TOOL_CALLS] world")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.convert_tokens_to_ids("[TOOL_CALLS]") in ids
    long = tok("word " * 40, truncation=True)["input_ids"]
    assert len(long) == 16 and long[-1] == tok.eos_token_id
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], chat_template="rag", tokenize=False) == "R"
    (tmp_path / "chat_template.jinja").write_text("J")
    assert lamina.AutoTokenizer.from_pretrained(tmp_path).chat_template == "J"


def test_batch_encoding_surface(lamina_mistral):
    tok = lamina_mistral["v1"]
    encoding = tok("hello", return_tensors="pt")
    assert encoding.input_ids.shape == (1, 3) and encoding.to("cpu") is encoding
    single = tok("hello", return_length=True, return_special_tokens_mask=True)
    assert single.length == [3] and single.special_tokens_mask == [1, 0, 0]
    tok.pad_token = "<unk>"
    try:
        padded = tok.pad([{"input_ids": [1, 2]}, {"input_ids": [3]}], return_tensors="pt")
    finally:
        tok.pad_token = None
    assert padded.input_ids.tolist() == [[1, 2], [0, 3]] and padded.attention_mask.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(AttributeError, match="no field"):
        encoding.not_a_field
    with pytest.raises(InputError, match="lengths"):
        tok(["a", "a b c d"], return_tensors="pt")
    with pytest.raises(InputError, match="out of range"):
        tok.decode([10**6])


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


def test_bad_input_raises_tokenizer_error(mistral_dirs, tmp_path):
    with pytest.raises(TokenizerError, match="no such file"):
        AutoTokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="no tokenizer files found"):
        AutoTokenizer.from_pretrained(tmp_path)
    corrupt = _write(tmp_path / "corrupt" / "tokenizer.json", '{"model": {"type": "BPE", "vocab": ')
    with pytest.raises(TokenizerError, match=f"{corrupt}.*JSONDecodeError"):
        AutoTokenizer.from_pretrained(corrupt.parent)
    invalid = _write(tmp_path / "invalid" / "tokenizer.json", '{"model": {"type": "BPE", "vocab": 3}}')
    with pytest.raises(TokenizerError, match=f"{invalid}: not a valid tokenizers document"):
        AutoTokenizer.from_pretrained(invalid.parent)
    model = (mistral_dirs["v3"] / "tokenizer.model").read_bytes()
    truncated = _write(tmp_path / "truncated" / "tokenizer.model", model[: len(model) // 2])
    with pytest.raises(TokenizerError, match=f"{truncated}: not a valid sentencepiece model"):
        AutoTokenizer.from_pretrained(truncated.parent)
    shutil.copyfile(mistral_dirs["v3"] / "tokenizer.model", tmp_path / "tokenizer.model")
    _write(tmp_path / "tokenizer_config.json", json.dumps({"beginning_token": "<s>"}))
    with pytest.raises(TokenizerError, match="tokenizer_config.json: unknown special-token name.*beginning_token"):
        AutoTokenizer.from_pretrained(tmp_path)
    tekken = json.loads((mistral_dirs["tekken"] / "tekken.json").read_text())
    tekken["vocab"][300]["token_bytes"] = "not base64!"
    broken = _write(tmp_path / "tekken" / "tekken.json", json.dumps(tekken))
    with pytest.raises(TokenizerError, match=f"{broken}: vocab\\[300\\]: expected base64"):
        AutoTokenizer.from_pretrained(broken.parent)
    not_gguf = _write(tmp_path / "model.gguf", b"GGML" + bytes(20))
    with pytest.raises(TokenizerError, match=f"{not_gguf}: not a GGUF file"):
        AutoTokenizer.from_pretrained(tmp_path, gguf_file="model.gguf")


def test_bad_calls_raise(lamina_mistral):
    tok = lamina_mistral["v1"]
    with pytest.raises(TokenizerError, match="unknown special-token name"):
        tok.add_special_tokens({"beginning_token": "<s>"})
    with pytest.raises(TokenizerError, match="pad token"):
        tok(["a", "a b"], padding=True)
    with pytest.raises(InputError, match="padding"):
        tok("a", padding="sideways")
    with pytest.raises(InputError, match="text_pair"):
        tok(["a", "b"], ["c"])


def test_sentencepiece_gguf_equals_transformers(mistral_dirs, tmp_path):
    """A llama.cpp 'llama' vocabulary (tokens, scores, types; no merges) written from the real v1
    model: lamina rebuilds the byte-fallback BPE the way transformers does."""
    gguf = pytest.importorskip("gguf")
    sentencepiece = pytest.importorskip("sentencepiece")
    model = sentencepiece.SentencePieceProcessor(model_file=str(mistral_dirs["v1"] / "tokenizer.model"))
    size = model.get_piece_size()
    kinds = [3 if model.is_control(i) else 2 if model.is_unknown(i) else 6 if model.is_byte(i) else 1 for i in range(size)]
    writer = gguf.GGUFWriter(str(tmp_path / "sp.gguf"), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([model.id_to_piece(i) for i in range(size)])
    writer.add_token_scores([model.get_score(i) for i in range(size)])
    writer.add_token_types(kinds)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours = AutoTokenizer.from_pretrained(tmp_path, gguf_file="sp.gguf")
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="sp.gguf")
    texts = corpus(240)
    ids = ours(texts)["input_ids"]
    assert ids == theirs(texts)["input_ids"]
    assert ids[0][0] == 1  # llama.cpp adds BOS to sentencepiece vocabularies unless told not to
    assert ours.batch_decode(ids, skip_special_tokens=True) == theirs.batch_decode(ids, skip_special_tokens=True)


def test_auto_tokenizer_opens_an_mluke_directory():
    from pathlib import Path

    import lamina

    directory = Path(__file__).parents[1] / "fixtures" / "mluke"
    tokenizer = lamina.AutoTokenizer.from_pretrained(directory)
    assert type(tokenizer).__name__ == "MLukeTokenizer"
    direct = lamina.MLukeTokenizer.from_pretrained(directory)
    text, spans = "Tokyo is big", [(0, 5)]
    assert dict(tokenizer(text, entity_spans=spans)) == dict(direct(text, entity_spans=spans))
