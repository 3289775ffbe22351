"""Task pipelines: a model and its tokenizer behind one call, with transformers' `pipeline`
call signatures and answers.

    pipe = lamina.pipeline("token-classification", model="path/to/model", aggregation_strategy="simple")
    pipe("Ada Lovelace was born in London.")
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import InputError
from .base import Pipeline
from .feature_extraction import FeatureExtractionPipeline
from .fill_mask import FillMaskPipeline, fill_mask
from .question_answering import QuestionAnsweringPipeline
from .text_classification import TextClassificationPipeline, ZeroShotClassificationPipeline
from .text_generation import TextGenerationPipeline
from .token_classification import TokenClassificationPipeline

# task → (pipeline class, the lamina auto class that loads its model from a path)
TASKS: dict[str, tuple[type[Pipeline], str]] = {
    "text-generation": (TextGenerationPipeline, "AutoModelForCausalLM"),
    "fill-mask": (FillMaskPipeline, "AutoModelForMaskedLM"),
    "question-answering": (QuestionAnsweringPipeline, "AutoModelForQuestionAnswering"),
    "token-classification": (TokenClassificationPipeline, "AutoModelForTokenClassification"),
    "text-classification": (TextClassificationPipeline, "AutoModelForSequenceClassification"),
    "feature-extraction": (FeatureExtractionPipeline, "AutoModel"),
    "zero-shot-classification": (ZeroShotClassificationPipeline, "AutoModelForSequenceClassification"),
}
ALIASES = {"ner": "token-classification", "sentiment-analysis": "text-classification"}


def pipeline(
    task: str,
    model: Any = None,
    tokenizer: Any = None,
    device: Any = None,
    dtype: Any = None,
    batch_size: int | None = None,
    **options: Any,
) -> Pipeline:
    """The pipeline of `task` over `model` (a lamina model, or a directory / Hub id it loads from,
    in `dtype` on `device`) and `tokenizer` (a lamina tokenizer or its path; by default the model
    path's). `options` are the task's call options, applied to every call (a call's own win);
    `batch_size` chunks go through the model at once.
    """
    from ..models import auto
    from ..tokenizers import AutoTokenizer

    name = ALIASES.get(task, task)
    if name not in TASKS:
        raise InputError(f"pipeline: unknown task {task!r}; lamina offers {sorted([*TASKS, *ALIASES])}")
    cls, auto_name = TASKS[name]
    if model is None:
        raise InputError(f"pipeline({task!r}): pass model= (a lamina model or the path of one); lamina picks no default model")
    if isinstance(model, (str, os.PathLike)):
        path = model
        loading = {key: value for key, value in (("dtype", dtype), ("device_map", device)) if value is not None}
        model = getattr(auto, auto_name).from_pretrained(path, **loading)
        if tokenizer is None:
            tokenizer = path
    elif device is not None:
        model = model.to(device)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    return cls(model, tokenizer, batch_size=batch_size, **options)


__all__ = [
    "FeatureExtractionPipeline", "FillMaskPipeline", "Pipeline", "QuestionAnsweringPipeline", "TASKS",
    "TextClassificationPipeline", "TextGenerationPipeline", "TokenClassificationPipeline",
    "ZeroShotClassificationPipeline", "fill_mask", "pipeline",
]  # fmt: skip
