"""Tokenizers with transformers' API: the Rust `tokenizers` engine, sentencepiece, Mistral tekken,
GPT-2 BPE, BERT WordPiece and GGUF vocabularies; chat templates; streaming detokenization."""

from .base import BatchEncoding, PreTrainedTokenizer, pad_batch, pad_sequence, to_tensor, truncate_pair
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
    PreTrainedTokenizerFast,
)
from .files import AutoTokenizer
from .gguf import from_gguf
from .streaming import IncrementalDetokenizer
