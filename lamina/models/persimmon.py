"""Persimmon (Adept) on the one decoder.

LayerNorm everywhere, per-head LayerNorm of queries and keys, rotary on the first
`partial_rotary_factor` of each head (channel i pairs with i + rotary_dim/2), a plain relu² MLP,
biases on every projection, and `hidden_dropout` after the MLP only. Checkpoints fuse q/k/v in
`query_key_value` with rows interleaved per head, `(heads, 3, head_dim)`; the name map reorders
them into lamina's [q; k; v] and back. Like the reference, Persimmon has no question-answering head.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..checkpoints.megatron import INTERLEAVED_QKV, qkv_from_standard, qkv_to_standard
from ..checkpoints.namemap import Rule, rename
from ..config import Layers, NonNegative, Positive, Probability, Size, TokenId, check_field, require
from ..layers.mlp import Activation
from .decoder import (
    DecoderForCausalLM,
    DecoderForSequenceClassification,
    DecoderForTokenClassification,
    DecoderModel,
    DecoderSpec,
)
from .decoder_config import ROPE_FIELDS, DecoderConfig


class PersimmonConfig(DecoderConfig):
    """Persimmon-8B's defaults. `partial_rotary_factor` (0.5 unless set) is read from the top level
    (transformers 4.x files) or from `rope_parameters` (transformers 5), and written back where it
    was found."""

    model_type = "persimmon"
    default_theta: ClassVar[float] = 25000.0
    init_keywords = (*DecoderConfig.init_keywords, "partial_rotary_factor")

    vocab_size: Size = 262144
    hidden_size: Size = 4096
    intermediate_size: Size = 16384
    num_hidden_layers: Layers = 36
    num_attention_heads: Size = 64
    hidden_act: Activation = "relu2"
    max_position_embeddings: Size = 16384
    initializer_range: NonNegative = 0.02
    layer_norm_eps: Positive = 1e-5
    use_cache: bool = True
    tie_word_embeddings: bool = False
    qk_layernorm: bool = True
    hidden_dropout: Probability = 0.0
    attention_dropout: Probability = 0.0
    pad_token_id: TokenId | None = None
    bos_token_id: TokenId | None = 1
    eos_token_id: TokenId | list[TokenId] | None = 2

    def __init__(self, **kwargs: Any) -> None:
        # a transformers 4.x file's top-level value; None where rope_parameters holds it (or nothing does)
        self._top_level_rotary = kwargs.pop("partial_rotary_factor", None)
        check_field("partial_rotary_factor", ROPE_FIELDS["partial_rotary_factor"] | None, self._top_level_rotary)
        super().__init__(**kwargs)

    @property
    def partial_rotary_factor(self) -> float:
        """The fraction of each head's channels that rotary embeddings turn."""
        found = self._top_level_rotary
        return float(found if found is not None else self.rope_parameters.get("partial_rotary_factor", 0.5))

    @partial_rotary_factor.setter
    def partial_rotary_factor(self, value: float) -> None:
        check_field("partial_rotary_factor", ROPE_FIELDS["partial_rotary_factor"], value)
        if self._top_level_rotary is not None:
            self._top_level_rotary = value
        else:
            self.rope_parameters["partial_rotary_factor"] = value

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self._top_level_rotary is not None:
            out["partial_rotary_factor"] = self._top_level_rotary
        return out

    def validate(self) -> None:
        super().validate()
        fraction = self.partial_rotary_factor
        require(
            int(self.resolved_head_dim * fraction) % 2 == 0,
            "partial_rotary_factor",
            f"a fraction of head_dim ({self.resolved_head_dim}) that rotates an even number of channels",
            fraction,
        )


def _interleaved_qkv(target: str, source: str, num_heads: int) -> Rule:
    return Rule(
        target,
        (source,),
        lambda ts: qkv_to_standard(ts[0], INTERLEAVED_QKV, num_heads),
        lambda t: [qkv_from_standard(t, INTERLEAVED_QKV, num_heads)],
    )


class PersimmonModel(DecoderModel):
    config_class = PersimmonConfig

    @classmethod
    def spec(cls, config: PersimmonConfig) -> DecoderSpec:
        head_dim = config.resolved_head_dim
        return DecoderSpec(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            num_kv_heads=config.num_attention_heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            activation=config.hidden_act,
            norm="layer",
            norm_eps=config.layer_norm_eps,
            attention_bias=True,
            output_bias=True,
            mlp="plain",
            mlp_bias=True,
            qk_norm=config.qk_layernorm,
            rotary_dim=int(head_dim * config.partial_rotary_factor),
            rope_parameters=config.rope_parameters,
            max_position_embeddings=config.max_position_embeddings,
            attention_dropout=float(config.attention_dropout),
            residual_dropout=float(config.hidden_dropout),
            dropout_after_attention=False,
            padding_idx=config.pad_token_id,
        )

    @classmethod
    def name_map(cls, config: PersimmonConfig) -> list[Rule]:
        renames = {"norm": "final_layernorm"}
        rules = []
        for i in range(config.num_hidden_layers):
            attn, mlp = f"layers.{i}.self_attn.", f"layers.{i}.mlp."
            renames.update({
                attn + "o_proj": attn + "dense",
                attn + "q_norm": attn + "q_layernorm",
                attn + "k_norm": attn + "k_layernorm",
                mlp + "up_proj": mlp + "dense_h_to_4h",
                mlp + "down_proj": mlp + "dense_4h_to_h",
            })
            for kind in ("weight", "bias"):
                rules.append(_interleaved_qkv(
                    attn + f"qkv_proj.{kind}", attn + f"query_key_value.{kind}", config.num_attention_heads
                ))
        rules += [rename(f"{ours}.{kind}", f"{theirs}.{kind}") for ours, theirs in renames.items()
                  for kind in ("weight", "bias")]
        return rules


class PersimmonForCausalLM(DecoderForCausalLM, base=PersimmonModel):
    pass


class PersimmonForSequenceClassification(DecoderForSequenceClassification, base=PersimmonModel):
    pass


class PersimmonForTokenClassification(DecoderForTokenClassification, base=PersimmonModel):
    pass
