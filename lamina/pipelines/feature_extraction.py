"""Feature extraction (`feature-extraction`): a base model's last hidden states for each text."""

from __future__ import annotations

from typing import Any

import torch

from .base import Pipeline


class FeatureExtractionPipeline(Pipeline):
    """`pipe(text_or_texts, truncation=None, tokenize_kwargs=None, return_tensors=False)`.

    Each text gives its `(1, seq, hidden)` hidden states as nested lists (a tensor with
    `return_tensors=True`); in a batch (`batch_size` > 1) a row keeps the padding of its batch,
    as in transformers.
    """

    task = "feature-extraction"

    def __call__(self, inputs: str | list[str], **call: Any) -> Any:
        return self.answer(inputs, call)

    def parameters(
        self,
        truncation: bool | str | None = None,
        tokenize_kwargs: dict[str, Any] | None = None,
        return_tensors: bool = False,
    ) -> dict[str, Any]:
        tokenizer_options = dict(tokenize_kwargs or {})
        if truncation is not None:
            tokenizer_options["truncation"] = truncation
        return {"tokenizer": tokenizer_options, "return_tensors": return_tensors}

    def preprocess(self, item: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"tensors": dict(self.tokenizer(item, return_tensors="pt", **params["tokenizer"]))}]

    def forward(self, inputs: dict[str, torch.Tensor], params: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"features": self.model(**inputs)[0]}

    def postprocess(self, chunks: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        features = chunks[0]["outputs"]["features"]
        return features if params["return_tensors"] else features.tolist()
