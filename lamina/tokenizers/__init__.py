"""Tokenizers with transformers' API.

`AutoTokenizer.from_pretrained(dir_or_file)` picks the engine from the files it finds:
`tokenizer.json` (the Rust `tokenizers` library), Mistral's `tekken.json` (ids exactly as
mistral_common's), a sentencepiece `tokenizer.model` (run by sentencepiece itself), GPT-2's
`vocab.json` + `merges.txt`, BERT's `vocab.txt`, or a GGUF file (`gguf_file=`, or `from_gguf`);
mLUKE's `sentencepiece.bpe.model` + `entity_vocab.json` make an `MLukeTokenizer`.
Every engine encodes whole batches in native code. On top: padding, truncation, tensors,
decoding, sandboxed chat templates (`apply_chat_template`), Mistral's instruct formats
(`encode_instruct`), streaming detokenization (`IncrementalDetokenizer`) and `save_pretrained`.
"""

from .base import BatchEncoding
from .classes import (
    BertTokenizer,
    BertTokenizerFast,
    GPT2Tokenizer,
    GPT2TokenizerFast,
    LlamaTokenizer,
    LlamaTokenizerFast,
    MobileBertTokenizer,
    MobileBertTokenizerFast,
    PersimmonTokenizer,
    PreTrainedTokenizer,
    PreTrainedTokenizerFast,
)
from .files import AutoTokenizer, from_gguf
from .mluke import MLukeTokenizer
from .streaming import IncrementalDetokenizer
