"""Text classification (`text-classification`, alias `sentiment-analysis`) and NLI-based
zero-shot classification (`zero-shot-classification`), over any `…ForSequenceClassification`.

Their answers are transformers' pipelines' answers: labels from `config.id2label`, scores after
`function_to_apply` (by default what the config's `problem_type` and `num_labels` imply).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .base import Pipeline, check_unknown, softmax

FUNCTIONS = ("sigmoid", "softmax", "none")
# `top_k` left out (transformers' "legacy" answer: the best label only, one dict per input)
UNSET = object()


class TextClassificationPipeline(Pipeline):
    """`pipe(text, top_k=…, function_to_apply=…)`; a text is a string, a `{"text", "text_pair"}`
    dict, or (in a list of inputs) a `[[text, text_pair]]` list.

    Without `top_k`, one text gives `[{"label", "score"}]` (the best label) and a list gives one
    such dict per text; with `top_k` (None: every label) each text gives its labels, best first.
    """

    task = "text-classification"

    def __call__(self, inputs: Any, **call: Any) -> Any:
        options, batch_size = self._options(call)
        if isinstance(inputs, list):
            return self.run(inputs, options, batch_size)
        result = self.run([inputs], options, batch_size)[0]
        # transformers wraps the best label of one string in a list unless this call set top_k
        return [result] if isinstance(inputs, str) and "top_k" not in call else result

    def parameters(
        self, top_k: Any = UNSET, function_to_apply: str | None = None, **tokenizer_options: Any
    ) -> dict[str, Any]:
        if top_k is not UNSET and top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise InputError(f"top_k: expected a positive integer or None, found {top_k!r}")
        if function_to_apply is not None and str(function_to_apply).lower() not in FUNCTIONS:
            raise InputError(f"function_to_apply: expected one of {FUNCTIONS}, found {function_to_apply!r}")
        function = str(function_to_apply).lower() if function_to_apply is not None else default_function(self.model.config)
        return {"top_k": top_k, "function": function, "tokenizer": tokenizer_options}

    def preprocess(self, item: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
        options = {**params["tokenizer"], "return_tensors": "pt"}
        if isinstance(item, dict):
            unknown = set(item) - {"text", "text_pair"}
            if "text" not in item or unknown:
                raise InputError(f"text-classification: expected a dict with 'text' (and 'text_pair'), found keys {sorted(item)}")
            encoded = self.tokenizer(item["text"], item.get("text_pair"), **options)
        elif isinstance(item, list) and len(item) == 1 and isinstance(item[0], list) and len(item[0]) == 2:
            encoded = self.tokenizer(item[0][0], item[0][1], **options)
        elif isinstance(item, str):
            encoded = self.tokenizer(item, **options)
        else:
            raise InputError(
                "text-classification: expected a text, a {'text', 'text_pair'} dict or a [[text, text_pair]] "
                f"list, found {item!r:.60}; send a pair as {{'text': ..., 'text_pair': ...}}"
            )
        return [{"tensors": dict(encoded)}]

    def postprocess(self, chunks: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        scores = apply_function(chunks[0]["outputs"]["logits"][0], params["function"])
        id2label = self.model.config.id2label
        top_k = params["top_k"]
        if top_k is UNSET:
            best = int(scores.argmax())
            return {"label": id2label[best], "score": scores[best].item()}
        ranked = [{"label": id2label[i], "score": score} for i, score in enumerate(scores.tolist())]
        ranked.sort(key=lambda entry: entry["score"], reverse=True)
        return ranked if top_k is None else ranked[:top_k]


def default_function(config: Any) -> str:
    """The function transformers applies to a classifier's logits when none is named."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def apply_function(logits: torch.Tensor, function: str) -> torch.Tensor:
    """`logits (num_labels,)` as scores: sigmoid, softmax or unchanged (float32)."""
    if function == "sigmoid":
        return torch.sigmoid(logits.float())
    if function == "softmax":
        return softmax(logits)
    return logits.float()


class ZeroShotClassificationPipeline(Pipeline):
    """`pipe(sequences, candidate_labels, hypothesis_template="This example is {}.", multi_label=False)`.

    Each (sequence, label) pair is an NLI premise / hypothesis; the entailment logit (the label of
    `config.label2id` starting with "entail") ranks the labels. One sequence gives
    `{"sequence", "labels", "scores"}` (best first), a list one such dict per sequence.
    """

    task = "zero-shot-classification"

    def __call__(self, sequences: str | list[str], *args: Any, **call: Any) -> Any:
        if len(args) == 1 and "candidate_labels" not in call:
            call["candidate_labels"] = args[0]
        elif args:
            raise InputError(f"zero-shot-classification: unexpected extra arguments {args!r}")
        return self.answer(sequences, call)

    def parameters(
        self,
        candidate_labels: str | list[str] | None = None,
        hypothesis_template: str = "This example is {}.",
        multi_label: bool = False,
        **unknown: Any,
    ) -> dict[str, Any]:
        check_unknown(self.task, unknown)
        if isinstance(candidate_labels, str):
            candidate_labels = [label.strip() for label in candidate_labels.split(",") if label.strip()]
        if not candidate_labels:
            raise InputError("zero-shot-classification: candidate_labels must name at least one label")
        if hypothesis_template.format(candidate_labels[0]) == hypothesis_template:
            raise InputError(
                f"hypothesis_template: {hypothesis_template!r} has no {{}} where the label goes"
            )
        entailment = next(
            (index for label, index in self.model.config.label2id.items() if label.lower().startswith("entail")), -1
        )
        return {"labels": list(candidate_labels), "template": hypothesis_template, "multi_label": multi_label, "entailment": entailment}

    def preprocess(self, item: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(item, str) or not item:
            raise InputError(f"zero-shot-classification: expected a non-empty text, found {item!r:.60}")
        chunks = []
        for label in params["labels"]:
            hypothesis = params["template"].format(label)
            # the premise may be cut (only_first), never the hypothesis; a premise too short to cut is kept whole
            try:
                encoded = self.tokenizer(item, hypothesis, truncation="only_first", padding=True, return_tensors="pt")
            except InputError:
                encoded = self.tokenizer(item, hypothesis, truncation=False, padding=True, return_tensors="pt")
            chunks.append({"tensors": dict(encoded), "label": label, "sequence": item})
        return chunks

    def postprocess(self, chunks: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        logits = torch.cat([chunk["outputs"]["logits"] for chunk in chunks]).float()  # (labels, classes)
        entailment = params["entailment"]
        if params["multi_label"] or len(chunks) == 1:
            contradiction = -1 if entailment == 0 else 0
            pair = logits[:, [contradiction, entailment]].exp()
            scores = pair[:, 1] / pair.sum(-1)
        else:
            exp = logits[:, entailment].exp()
            scores = exp / exp.sum()
        order = scores.argsort(descending=True, stable=True).tolist()
        return {
            "sequence": chunks[0]["sequence"],
            "labels": [chunks[i]["label"] for i in order],
            "scores": [scores[i].item() for i in order],
        }
