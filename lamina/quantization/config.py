"""What to quantize and how: lamina's `QuantizationConfig` and the bitsandbytes-style
`BitsAndBytesConfig` that Mistral's and transformers' docs print.

Both serialise to the `quantization_config` entry of config.json, so a saved quantized model
says how to rebuild its layers when it is loaded again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import Size, check_fields, dtype_name, field_types, resolve_dtype
from ..errors import ConfigError, UnsupportedError
from .methods import METHODS

# what a saved quantized model's config.json says of its directory
LAMINA_FORMAT_NOTE = ("lamina's own quantized layout (weight-only int8 / int4 / nf4 layers): lamina loads this "
                      "directory, transformers cannot")
GROUP_SIZES = (32, 64, 128)
# dtypes a quantized layer can compute in: its activations, outputs and dequantized weights
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class QuantizationConfig:
    """Weight quantization of a model's linear layers.

    - `method="int8"`: one int8 per weight, one scale per output channel (symmetric).
    - `method="int4"`: 4-bit weights in groups of `group_size` inputs, each group with its own
      scale and minimum (asymmetric), two weights per byte.
    - `method="nf4"`: 4-bit NormalFloat codes in blocks of `group_size`, one absmax per block.

    `compute_dtype` (None: the model's dtype) is what activations and outputs are in.
    `modules_to_not_convert` lists module names (or name suffixes) left in full precision;
    `module_methods` maps module names (or name suffixes) to another method for them, such as
    `{"lm_head": "int8"}` (an output layer rounded to 4 bits costs far more accuracy than the rest).
    The default group size is 32, Q4_1's: a model already quantized in groups of 32 (GGUF) keeps
    its exact values, where groups of 64 add a second rounding.
    """

    method: str = "int8"
    group_size: Size = 32
    compute_dtype: torch.dtype | None = None
    modules_to_not_convert: list[str] = field(default_factory=list)
    module_methods: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, _checked_types(QuantizationConfig), prefix="quantization_config.")
        if self.method not in METHODS:
            raise ConfigError(f"quantization_config.method: expected one of {METHODS}, found {self.method!r}")
        for name, method in self.module_methods.items():
            if method not in METHODS:
                raise ConfigError(f"quantization_config.module_methods[{name!r}]: expected one of {METHODS}, "
                                  f"found {method!r}")
        if self.method != "int8" and self.group_size not in GROUP_SIZES:
            raise ConfigError(f"quantization_config.group_size: expected one of {GROUP_SIZES}, found {self.group_size!r}")
        self.compute_dtype = check_compute_dtype(self.compute_dtype, "quantization_config.compute_dtype")

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": "lamina",
            "note": LAMINA_FORMAT_NOTE,
            "method": self.method,
            "group_size": self.group_size,
            "compute_dtype": dtype_name(self.compute_dtype) if self.compute_dtype else None,
            "modules_to_not_convert": list(self.modules_to_not_convert),
            "module_methods": dict(self.module_methods),
        }

    def method_for(self, name: str) -> str | None:
        """The method for the module called `name`, or None where it stays in full precision."""
        if any(_names(name, skip) for skip in self.modules_to_not_convert):
            return None
        return next((method for key, method in self.module_methods.items() if _names(name, key)), self.method)


def decoding_config(method: str) -> QuantizationConfig:
    """What `lamina generate` / `chat` / `bench` run for `method`: int4 in groups of 32 (Q4_1's) with
    the output layer in int8 (in 4 bits SmolLM2-135M's head turned "Paris" into "L'Étoile"), or
    plain int8."""
    return QuantizationConfig(method=method, group_size=32,
                              module_methods={"lm_head": "int8"} if method in ("int4", "nf4") else {})


def _names(name: str, key: str) -> bool:
    """Whether `key` names the module `name`: the whole name or its trailing components."""
    return name == key or name.endswith("." + key)


@dataclass
class BitsAndBytesConfig:
    """The bitsandbytes options as transformers spells them; lamina runs what it can of them.

    `load_in_8bit` → int8; `load_in_4bit` with `bnb_4bit_quant_type="nf4"` → nf4 in blocks of 64
    computing in `bnb_4bit_compute_dtype` (a dtype or a string such as "torch.float16").
    """

    load_in_8bit: bool = False
    load_in_4bit: bool = False
    bnb_4bit_quant_type: str = "fp4"
    bnb_4bit_compute_dtype: Any = None
    bnb_4bit_use_double_quant: bool = False
    llm_int8_skip_modules: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self, _checked_types(BitsAndBytesConfig), prefix="BitsAndBytesConfig.")
        if self.load_in_8bit == self.load_in_4bit:
            raise ConfigError(
                "BitsAndBytesConfig: expected exactly one of load_in_8bit and load_in_4bit to be True, "
                f"found load_in_8bit={self.load_in_8bit}, load_in_4bit={self.load_in_4bit}"
            )
        if self.load_in_4bit and self.bnb_4bit_quant_type != "nf4":
            raise UnsupportedError(
                f"BitsAndBytesConfig.bnb_4bit_quant_type: lamina implements 'nf4' (and int4 through "
                f"QuantizationConfig(method='int4')), found {self.bnb_4bit_quant_type!r}"
            )
        self.bnb_4bit_compute_dtype = check_compute_dtype(self.bnb_4bit_compute_dtype, "bnb_4bit_compute_dtype")

    def to_lamina(self) -> QuantizationConfig:
        """The lamina config with the same meaning."""
        return QuantizationConfig(
            method="int8" if self.load_in_8bit else "nf4",
            group_size=64,  # bitsandbytes' nf4 block size
            compute_dtype=self.bnb_4bit_compute_dtype if self.load_in_4bit else None,
            modules_to_not_convert=list(self.llm_int8_skip_modules or []),
        )

    def to_dict(self) -> dict[str, Any]:
        compute = self.bnb_4bit_compute_dtype
        return {
            "quant_method": "bitsandbytes",
            "load_in_8bit": self.load_in_8bit,
            "load_in_4bit": self.load_in_4bit,
            "bnb_4bit_quant_type": self.bnb_4bit_quant_type,
            "bnb_4bit_compute_dtype": dtype_name(compute) if compute else None,
            "bnb_4bit_use_double_quant": self.bnb_4bit_use_double_quant,
            "llm_int8_skip_modules": self.llm_int8_skip_modules,
            **self.extra,
        }


def _checked_types(cls: type) -> dict[str, Any]:
    """A quantization config's field types, less its compute dtype's (`check_compute_dtype` reads
    that one: a dtype or its name)."""
    return {name: kind for name, kind in field_types(cls).items() if "compute_dtype" not in name}


def check_compute_dtype(value: Any, argument: str) -> torch.dtype | None:
    """A dtype, its name or "torch.<name>" → the dtype; anything a quantized layer cannot compute
    in (integers, float64, float8) is an UnsupportedError."""
    try:
        dtype = resolve_dtype(value, argument)
    except ConfigError:
        raise UnsupportedError(
            f"{argument}: expected one of {[dtype_name(d) for d in COMPUTE_DTYPES]}, found {value!r}"
        ) from None
    if dtype is not None and dtype not in COMPUTE_DTYPES:
        raise UnsupportedError(
            f"{argument}: quantized layers compute in {[dtype_name(d) for d in COMPUTE_DTYPES]}, found {dtype_name(dtype)}"
        )
    return dtype


def as_quantization_config(value: Any) -> QuantizationConfig:
    """A QuantizationConfig, a BitsAndBytesConfig, a method name ("int8") or a config.json dict →
    the QuantizationConfig that lamina runs."""
    if isinstance(value, QuantizationConfig):
        return value
    if isinstance(value, BitsAndBytesConfig):
        return value.to_lamina()
    if isinstance(value, str):
        return QuantizationConfig(method=value)
    if isinstance(value, dict):
        data = dict(value)
        kind = data.pop("quant_method", None)
        if kind == "lamina":
            # files written before activations stopped being rounded carry a "smoothing" entry
            data.pop("smoothing", None)
            data.pop("note", None)
            unknown = sorted(set(data) - set(QuantizationConfig.__dataclass_fields__))
            if unknown:
                raise ConfigError(f"quantization_config: unknown keys {unknown} for quant_method 'lamina' "
                                  f"(expected some of {sorted(QuantizationConfig.__dataclass_fields__)})")
            return QuantizationConfig(**data)
        if kind == "bitsandbytes":
            known = {k: data.pop(k) for k in list(data) if k in BitsAndBytesConfig.__dataclass_fields__}
            return BitsAndBytesConfig(**known, extra=data).to_lamina()
        raise UnsupportedError(f"quantization_config.quant_method: expected 'lamina' or 'bitsandbytes', found {kind!r}")
    raise ConfigError(
        "quantization_config: expected a QuantizationConfig, BitsAndBytesConfig, method name or dict, "
        f"found {type(value).__name__}"
    )
