"""`GenerationConfig`: the decoding settings of `generate`, read from and written to
`generation_config.json` with transformers' field names and defaults."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Annotated, Any

from ..config import (
    Bounds, Count, Positive, Size, TokenId, check_fields, read_config_json,
)
from ..errors import ConfigError, UnsupportedError

GENERATION_CONFIG_NAME = "generation_config.json"

# field → default when neither the model nor the caller sets it (transformers' defaults)
_DEFAULTS: dict[str, Any] = {
    "max_length": 20,
    "max_new_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "min_p": None,
    "repetition_penalty": 1.0,
    "num_return_sequences": 1,
    "use_cache": True,
    "output_scores": False,
    "output_logits": False,
    "return_dict_in_generate": False,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "cache_implementation": None,
    "disable_compile": False,
    "compile_config": None,
    "max_time": None,
    "stop_strings": None,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "sequence_bias": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "num_beams": 1,
    "length_penalty": 1.0,
    "early_stopping": False,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "num_assistant_tokens": 20,
    "num_assistant_tokens_schedule": "constant",
}
# field → its type, checked before anything computes with it (see lamina.config.check_field)
_TYPES: dict[str, Any] = {
    "max_length": Size | None,
    "max_new_tokens": Count | None,
    "min_length": Count,
    "min_new_tokens": Count | None,
    "do_sample": bool,
    "temperature": Positive | None,
    "top_k": Count | None,
    "top_p": Annotated[float, Bounds(0.0, 1.0, low_open=True)] | None,
    "min_p": Annotated[float, Bounds(0.0, 1.0)] | None,
    "repetition_penalty": Positive | None,
    "num_return_sequences": Size,
    "use_cache": bool,
    "output_scores": bool,
    "output_logits": bool,
    "return_dict_in_generate": bool,
    "pad_token_id": TokenId | None,
    "bos_token_id": TokenId | None,
    "eos_token_id": TokenId | list[TokenId] | None,
    "cache_implementation": str | None,
    "disable_compile": bool,
    "compile_config": Any,
    "max_time": Positive | None,
    "stop_strings": str | list[str] | None,
    "no_repeat_ngram_size": Count | None,
    "bad_words_ids": list[list[TokenId]] | None,
    "sequence_bias": Any,
    "suppress_tokens": list[TokenId] | None,
    "begin_suppress_tokens": list[TokenId] | None,
    "num_beams": Size,
    "length_penalty": float,
    "early_stopping": bool | str,
    "num_beam_groups": Size,
    "diversity_penalty": Annotated[float, Bounds(0.0, None)],
    "num_assistant_tokens": Size,
    "num_assistant_tokens_schedule": str,
}
_TOKEN_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id")
# what `compile_config` may set: keyword arguments of `torch.compile`
_COMPILE_KEYS = {"fullgraph", "dynamic", "backend", "mode", "options"}
# transformers' fields that lamina does not implement, with the value that means "off": a file or a
# call may carry them at that value, any other value is refused rather than silently ignored
_UNSUPPORTED: dict[str, Any] = {
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "top_h": None,
    "encoder_repetition_penalty": 1.0,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "renormalize_logits": False,
    "penalty_alpha": None,
}


class GenerationConfig:
    """Decoding settings. Fields not listed in `_DEFAULTS` are kept and written back unchanged."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("transformers_version", None)
        kwargs.pop("_from_model_config", None)
        for name, default in _DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, copy.deepcopy(default)))
        self._extra = dict(kwargs)
        for name, value in {**_UNSUPPORTED, **kwargs}.items():
            setattr(self, name, value)
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the field for values out of range, `UnsupportedError` for
        settings of transformers' that lamina does not implement."""
        check_fields(self, _TYPES, prefix="generation config ")
        checks = [
            ("num_return_sequences",
             self.num_return_sequences <= self.num_beams or (self.num_beams == 1 and self.do_sample),
             "at most num_beams (greedy decoding would repeat one sequence; sampling without beams may ask for more)"),
            ("early_stopping", self.early_stopping in (True, False, "never"), 'True, False or "never"'),
            ("num_beam_groups", self.num_beams % self.num_beam_groups == 0,
             f"a divisor of num_beams={self.num_beams} (each group holds as many beams)"),
            ("num_beam_groups", self.num_beam_groups == 1 or not self.do_sample,
             "1 when sampling (diverse beam search is deterministic)"),
            ("diversity_penalty", (self.diversity_penalty > 0.0) == (self.num_beam_groups > 1),
             "above 0.0 exactly when num_beam_groups > 1 (groups without it would repeat each other)"),
            ("num_assistant_tokens_schedule", self.num_assistant_tokens_schedule in ("constant", "heuristic"),
             '"constant" or "heuristic"'),
            ("compile_config", self.compile_config is None or set(self.compile_settings()) <= _COMPILE_KEYS,
             f"None or torch.compile settings among {sorted(_COMPILE_KEYS)}"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"generation config {name}: expected {expected}, found {getattr(self, name)!r}")
        for name, neutral in _UNSUPPORTED.items():
            value = getattr(self, name)
            if value != neutral:
                raise UnsupportedError(
                    f"generation config {name}={value!r} is not supported by lamina (leave it at {neutral!r})"
                )

    @classmethod
    def from_model_config(cls, model_config: Any) -> GenerationConfig:
        """Token ids (pad/bos/eos) taken from the model's config; every other field at its default."""
        return cls(**{name: getattr(model_config, name, None) for name in _TOKEN_FIELDS})

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the given known fields; return the keyword arguments that are not generation fields."""
        unused = {}
        for name, value in kwargs.items():
            if name in _DEFAULTS or name in self._extra or name in _UNSUPPORTED:
                setattr(self, name, value)
            else:
                unused[name] = value
        self.validate()
        return unused

    def copy(self) -> GenerationConfig:
        return copy.deepcopy(self)

    def compile_settings(self) -> dict[str, Any] | None:
        """`compile_config` as `torch.compile` keyword arguments: a dict, or transformers'
        `CompileConfig` (its private fields dropped); None when unset."""
        found = self.compile_config
        if found is None:
            return None
        if hasattr(found, "to_dict"):
            found = {k: v for k, v in found.to_dict().items() if not k.startswith("_")}
        if not isinstance(found, dict):
            raise ConfigError(f"generation config compile_config: expected a dict or CompileConfig, found {found!r}")
        return dict(found)

    @property
    def eos_token_ids(self) -> list[int]:
        """`eos_token_id` as a list (empty when unset)."""
        eos = self.eos_token_id
        if eos is None:
            return []
        return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]

    def to_dict(self) -> dict[str, Any]:
        out = {name: copy.deepcopy(getattr(self, name)) for name in _DEFAULTS}
        out.update({name: copy.deepcopy(getattr(self, name)) for name in self._extra})
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """Only the fields that differ from the defaults (what `generation_config.json` holds)."""
        return {k: v for k, v in self.to_dict().items() if k not in _DEFAULTS or _DEFAULTS[k] != v}

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_diff_dict(), indent=2, sort_keys=True) + "\n"
        (path / GENERATION_CONFIG_NAME).write_text(text)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config_file_name: str = GENERATION_CONFIG_NAME) -> GenerationConfig:
        path = Path(path)
        file = path / config_file_name if path.is_dir() else path
        try:
            return cls(**read_config_json(file))
        except TypeError as err:
            raise ConfigError(f"{file}: {err}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GenerationConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"GenerationConfig {json.dumps(self.to_diff_dict(), indent=2, sort_keys=True)}"
