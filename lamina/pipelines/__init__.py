"""Task pipelines: a model and its tokenizer behind one call (transformers' `pipeline` results)."""

from .fill_mask import fill_mask

__all__ = ["fill_mask"]
