"""Weight quantization: int8 (per channel), int4 (grouped) and nf4 linear layers, and
`quantize(model, config)` that puts them into a model."""

from .apply import quantize
from .config import BitsAndBytesConfig, QuantizationConfig
from .linear import Int4Linear, Int8Linear, NF4Linear, QuantizedLinear

__all__ = ["BitsAndBytesConfig", "Int4Linear", "Int8Linear", "NF4Linear", "QuantizationConfig", "QuantizedLinear", "quantize"]
