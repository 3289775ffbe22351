"""Text generation: `GenerationConfig`, logits processors, the decoding loop and streamers."""

from .config import GenerationConfig
from .decoding import GenerateDecoderOnlyOutput, GenerationMixin
from .processors import (
    LogitsProcessor,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

__all__ = [
    "GenerateDecoderOnlyOutput",
    "GenerationConfig",
    "GenerationMixin",
    "LogitsProcessor",
    "LogitsProcessorList",
    "MinLengthLogitsProcessor",
    "MinPLogitsWarper",
    "RepetitionPenaltyLogitsProcessor",
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
]
