"""Weight quantization: int8 (per channel), int4 (grouped) and nf4 linear layers, and
`quantize(model, config)` that puts them into a model.

The names below are imported when first used, so that `methods` (what the command line offers)
can be read without importing torch."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "quantize": ".apply",
    "BitsAndBytesConfig": ".config",
    "QuantizationConfig": ".config",
    "Int4Linear": ".linear",
    "Int8Linear": ".linear",
    "NF4Linear": ".linear",
    "QuantizedLinear": ".linear",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
