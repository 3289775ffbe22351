"""The tokenizer classes users know from transformers. Each is `PreTrainedTokenizer` with the
defaults transformers' class of the same name has; the engine comes from the files found."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import PreTrainedTokenizerBase
from .files import TOKENIZER_CLASSES, load_tokenizer, save_tokenizer

# Adept's chat prompt, "human: {prompt}\n\nadept:", for every turn of a conversation
PERSIMMON_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'human: ' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'adept: ' + message['content'] + '\n\n' }}"
    "{% else %}{{ message['content'] + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'adept:' }}{% endif %}"
)


class PreTrainedTokenizer(PreTrainedTokenizerBase):
    """The base tokenizer with its files: `from_pretrained` and `save_pretrained`."""

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write the engine's files, `tokenizer_config.json` and `special_tokens_map.json` so
        that this class and transformers' `AutoTokenizer` both load them."""
        return save_tokenizer(self, Path(save_directory))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> PreTrainedTokenizer:
        """Load from a directory (or a single tokenizer file); see `AutoTokenizer.from_pretrained`."""
        return load_tokenizer(name_or_path, cls=cls, **kwargs)


class PreTrainedTokenizerFast(PreTrainedTokenizer):
    """Any tokenizer described by a `tokenizer.json`, with no family defaults."""


class LlamaTokenizer(PreTrainedTokenizer):
    """Llama / Mistral: sentencepiece byte-fallback BPE (`tokenizer.model`) or its `tokenizer.json`;
    `<s>` before each sequence by default, left padding."""

    padding_side = "left"
    class_defaults: dict[str, Any] = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
    }


class LlamaTokenizerFast(LlamaTokenizer):
    """The same tokenizer as `LlamaTokenizer` (transformers 5 has one class under both names)."""


class PersimmonTokenizer(LlamaTokenizer):
    """Adept Persimmon: a sentencepiece unigram model whose one special token `|ENDOFTEXT|`
    is both BOS and EOS (as transformers' conversion script sets it)."""

    padding_side = "right"
    class_defaults = {
        **LlamaTokenizer.class_defaults,
        "bos_token": "|ENDOFTEXT|",
        "eos_token": "|ENDOFTEXT|",
        "chat_template": PERSIMMON_CHAT_TEMPLATE,  # `human: {prompt}\n\nadept:`, the model card's prompt
    }


class GPT2Tokenizer(PreTrainedTokenizer):
    """GPT-2 byte-level BPE (`vocab.json` + `merges.txt`, or a `tokenizer.json`)."""

    class_defaults = {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "add_bos_token": False,
        "add_eos_token": False,
    }


class GPT2TokenizerFast(GPT2Tokenizer):
    """The same tokenizer as `GPT2Tokenizer`."""


class BertTokenizer(PreTrainedTokenizer):
    """BERT WordPiece (`vocab.txt`) with the basic tokenizer; `[CLS] A [SEP] B [SEP]` with
    token type ids 0 / 1."""

    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    class_defaults = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "do_lower_case": True,
    }


class BertTokenizerFast(BertTokenizer):
    """The same tokenizer as `BertTokenizer`."""


class MobileBertTokenizer(BertTokenizer):
    """MobileBERT uses BERT's uncased WordPiece tokenizer unchanged."""


class MobileBertTokenizerFast(MobileBertTokenizer):
    """The same tokenizer as `MobileBertTokenizer`."""


class _TekkenTokenizer(PreTrainedTokenizerFast):
    """Mistral tekken (`tekken.json`): mistral_common's ids; `<s>` first when adding special tokens."""

    padding_side = "left"
    class_defaults = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True}


# the classes by name for the loaders (the class names transformers writes, and its aliases)
_ALIASES = {
    "TokenizersBackend": PreTrainedTokenizerFast,
    "CodeLlamaTokenizer": LlamaTokenizer,
    "CodeLlamaTokenizerFast": LlamaTokenizer,
}
_CLASSES = (
    PreTrainedTokenizerFast, LlamaTokenizer, LlamaTokenizerFast, PersimmonTokenizer, GPT2Tokenizer, GPT2TokenizerFast,
    BertTokenizer, BertTokenizerFast, MobileBertTokenizer, MobileBertTokenizerFast, _TekkenTokenizer,
)  # fmt: skip
TOKENIZER_CLASSES.update({cls.__name__: cls for cls in _CLASSES}, **_ALIASES)
