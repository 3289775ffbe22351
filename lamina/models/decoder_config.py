"""What the decoder families' configs share: rotary parameters in both spellings, layer types and
the consistency checks of heads, windows and experts."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from ..config import Bounds, PretrainedConfig, Positive, Size, check_field, require
from ..layers.rotary import ROPE_TYPES
from .decoder import DecoderSpec

LAYER_TYPES = ("full_attention", "sliding_attention")
# the entries of `rope_parameters` the rotary embedding reads, with their types
ROPE_FIELDS: dict[str, Any] = {
    "rope_type": str,
    "rope_theta": Positive,
    "factor": Positive,
    "original_max_position_embeddings": Size,
    "partial_rotary_factor": Annotated[float, Bounds(0.0, 1.0, low_open=True)],
    "low_freq_factor": Positive,
    "high_freq_factor": Positive,
    "attention_factor": Positive,
    "beta_fast": float,
    "beta_slow": float,
    "mscale": float,
    "mscale_all_dim": float,
    "truncate": bool,
}


class DecoderConfig(PretrainedConfig):
    """Base of Mistral-like configs.

    Rotary settings are read from `rope_parameters` (transformers 5) or `rope_theta` +
    `rope_scaling` (earlier files) and written back in the spelling they came in.
    """

    default_theta: ClassVar[float] = 10000.0
    init_keywords = (*PretrainedConfig.init_keywords, "rope_theta", "rope_scaling")
    rope_parameters: dict | None = None

    def __init__(self, **kwargs: Any) -> None:
        legacy = "rope_parameters" not in kwargs and ("rope_theta" in kwargs or "rope_scaling" in kwargs)
        theta = kwargs.pop("rope_theta", None)
        scaling = kwargs.pop("rope_scaling", None)
        params = kwargs.pop("rope_parameters", None)
        check_field("rope_parameters", dict | None, params)
        check_field("rope_scaling", dict | None, scaling)
        check_field("rope_theta", Positive | None, theta)
        params = dict(params or scaling or {})
        if "type" in params and "rope_type" not in params:
            params["rope_type"] = params.pop("type")
        params.setdefault("rope_type", "default")
        params.setdefault("rope_theta", theta if theta is not None else self.default_theta)
        self._legacy_rope = legacy
        kwargs["rope_parameters"] = params
        super().__init__(**kwargs)

    def __post_init__(self) -> None:
        super().__post_init__()
        if getattr(self, "num_key_value_heads", None) is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.rope_parameters["rope_type"] in ("llama3", "yarn"):
            self.rope_parameters.setdefault("original_max_position_embeddings", self.max_position_embeddings)

    @property
    def rope_theta(self) -> float:
        return self.rope_parameters["rope_theta"]

    @property
    def resolved_head_dim(self) -> int:
        return getattr(self, "head_dim", None) or self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        super().validate()
        for key, annotation in ROPE_FIELDS.items():
            if key in self.rope_parameters:
                check_field(f"rope_parameters.{key}", annotation, self.rope_parameters[key])
        if getattr(self, "head_dim", None) is None:
            require(
                self.hidden_size % self.num_attention_heads == 0,
                "num_attention_heads",
                f"a divisor of hidden_size ({self.hidden_size}) when head_dim is not set",
                self.num_attention_heads,
            )
        require(
            self.num_attention_heads % self.num_key_value_heads == 0,
            "num_key_value_heads",
            f"a divisor of num_attention_heads ({self.num_attention_heads})",
            self.num_key_value_heads,
        )
        rope_type = self.rope_parameters.get("rope_type")
        require(rope_type in ROPE_TYPES, "rope_parameters.rope_type", f"one of {ROPE_TYPES}", rope_type)
        if rope_type in ("linear", "dynamic", "llama3"):
            require("factor" in self.rope_parameters, "rope_parameters.factor", f"a number for {rope_type} scaling", None)
        window = getattr(self, "sliding_window", None)
        layer_types = getattr(self, "layer_types", None)
        if layer_types is not None:
            require(
                isinstance(layer_types, list) and len(layer_types) == self.num_hidden_layers,
                "layer_types",
                f"a list of {self.num_hidden_layers} entries (one per layer)",
                layer_types,
            )
            for kind in layer_types:
                require(kind in LAYER_TYPES, "layer_types", f"entries from {LAYER_TYPES}", kind)
            if "sliding_attention" in layer_types:
                require(window is not None, "sliding_window", "a window size, since layer_types has sliding layers", window)

    def layer_windows(self) -> list[int | None]:
        """Per layer: its attention window, or None for full attention."""
        window = getattr(self, "sliding_window", None)
        layer_types = getattr(self, "layer_types", None)
        if layer_types is None:
            return [window] * self.num_hidden_layers
        return [window if kind == "sliding_attention" else None for kind in layer_types]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self._legacy_rope:
            params = dict(out.pop("rope_parameters"))
            out["rope_theta"] = params.pop("rope_theta")
            out["rope_scaling"] = None if params.get("rope_type") == "default" and len(params) == 1 else params
        return out


def llama_like_spec(config: DecoderConfig, **switches: Any) -> DecoderSpec:
    """The decoder switches every Llama-shaped family shares; `switches` override them."""
    fields = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        head_dim=config.resolved_head_dim,
        intermediate_size=config.intermediate_size,
        activation=config.hidden_act,
        norm="rms",
        norm_eps=config.rms_norm_eps,
        rope_parameters=config.rope_parameters,
        max_position_embeddings=config.max_position_embeddings,
        layer_windows=config.layer_windows(),
        attention_dropout=float(getattr(config, "attention_dropout", 0.0)),
        padding_idx=config.pad_token_id,
    )
    fields.update(switches)
    return DecoderSpec(**fields)
