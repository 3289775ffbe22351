"""The one pre-norm decoder behind Mistral, Ministral, Mixtral, Llama, Qwen2 (and the families
that add their switches to `DecoderSpec`).

A family is a config class, a `spec(config)` that reads it into the switches below, and a name
map for its checkpoints. Module names follow the Mistral checkpoint layout where nothing is fused,
so most checkpoint names load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import Cache, make_cache
from ..checkpoints.namemap import Rule, concat, rename, stack
from ..config import PretrainedConfig
from ..generation import GenerationConfig, GenerationMixin
from ..layers.attention import attend, build_attention_mask
from ..layers.heads import (
    QuestionAnsweringHead,
    causal_lm_loss,
    last_token_index,
    sequence_classification_loss,
    token_classification_loss,
)
from ..layers.fused import expose_parts, project
from ..layers.linear import Linear
from ..layers.mlp import GatedMLP, PlainMLP
from ..layers.moe import SparseMoE, load_balancing_loss
from ..layers.norms import make_norm
from ..layers.rotary import RotaryEmbedding, apply_rotary
from ..modeling import PreTrainedModel
from ..outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MoeCausalLMOutputWithPast,
    MoeModelOutputWithPast,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
    finish,
)
from .forward import prepare_inputs, run_layer_stack


@dataclass
class DecoderSpec:
    """The switches that make the one decoder into a given family."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    activation: str = "silu"
    norm: str = "rms"  # "rms" | "layer"
    norm_eps: float = 1e-6
    norm_bias: bool = True  # LayerNorm only
    attention_bias: bool = False  # q/k/v projections
    output_bias: bool = False  # attention output projection
    mlp: str = "gated"  # "gated" | "plain"
    mlp_bias: bool = False
    qk_norm: bool = False  # per-head norm of queries and keys before rotary (Persimmon)
    position: str = "rope"  # "rope" | "learned"
    rotary_dim: int | None = None  # None: the whole head
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    max_position_embeddings: int = 2048
    layer_windows: list[int | None] = field(default_factory=list)  # per layer: None or the window
    num_experts: int = 0  # 0: dense MLP
    experts_per_token: int = 2
    router_jitter: float = 0.0
    attention_scales: list[float] | None = None  # per layer; None: head_dim ** -0.5
    upcast_attention: bool = False
    attention_dropout: float = 0.0
    residual_dropout: float = 0.0  # after attention and MLP outputs
    dropout_after_attention: bool = True  # False: residual_dropout follows the MLP only (Persimmon)
    embedding_dropout: float = 0.0
    padding_idx: int | None = None

    # fields that size the decoder or number its layers: every step takes them as arguments, so
    # they say nothing about which maths a step must implement
    SIZES: ClassVar[frozenset[str]] = frozenset({
        "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
        "norm_eps", "max_position_embeddings", "layer_windows", "attention_scales", "padding_idx",
    })

    def __post_init__(self) -> None:
        if not self.layer_windows:
            self.layer_windows = [None] * self.num_layers

    def step_maths(self) -> dict[str, Any]:
        """The maths a decode step must implement to run this decoder, by name: every switch and its
        value (the `SIZES` aside), with `rotary_dim` read as `rotary` ("full", "partial" or None).
        A switch added to the spec appears here by construction, so a faster step that does not
        declare it (`generation.native_step.IMPLEMENTS`) leaves the decoder to the eager step."""
        maths = {item.name: getattr(self, item.name) for item in fields(self)
                 if item.name not in self.SIZES and item.name != "rotary_dim"}
        if self.position != "rope":
            maths["rotary"] = None
        else:
            maths["rotary"] = "full" if self.rotary_dim in (None, self.head_dim) else "partial"
        return maths


class DecoderAttention(nn.Module):
    """Grouped-query attention with a fused q/k/v projection."""

    def __init__(self, spec: DecoderSpec, layer_idx: int, backend: str) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.window = spec.layer_windows[layer_idx]
        self.scale = spec.attention_scales[layer_idx] if spec.attention_scales else spec.head_dim**-0.5
        self.upcast = spec.upcast_attention
        self.dropout = spec.attention_dropout
        self.backend = backend
        width = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = Linear(spec.hidden_size, width, bias=spec.attention_bias)
        kv_width = self.num_kv_heads * self.head_dim
        expose_parts(self, "qkv_proj", ["q_proj", "k_proj", "v_proj"], [width - 2 * kv_width, kv_width, kv_width])
        self.o_proj = Linear(self.num_heads * self.head_dim, spec.hidden_size, bias=spec.output_bias)
        if spec.qk_norm:
            self.q_norm = make_norm(spec.norm, self.head_dim, spec.norm_eps)
            self.k_norm = make_norm(spec.norm, self.head_dim, spec.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None,
        masks: MaskBuilder,
        cache: Any,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq, _ = x.shape
        q, k, v = project(self, "qkv_proj", x).split(
            [self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.num_kv_heads * self.head_dim], dim=-1
        )
        q = q.view(batch, seq, self.num_heads, self.head_dim)
        k = k.view(batch, seq, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        key_positions = masks.query_positions
        if cache is not None:
            k, v, key_positions = cache.update(k, v, masks.query_positions)
        mask, is_causal = masks.get(self.window, key_positions)
        out, weights = attend(
            self.backend, q, k, v, mask, self.scale,
            dropout=self.dropout if self.training else 0.0, is_causal=is_causal,
            upcast=self.upcast, need_weights=need_weights,
        )
        out = out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)
        return self.o_proj(out.to(x.dtype)), weights


class MaskBuilder:
    """Builds each layer type's mask once per forward and hands it to every layer of that type."""

    def __init__(self, query_positions: torch.Tensor, padding_mask: torch.Tensor | None, dtype: torch.dtype, fresh: bool) -> None:
        self.query_positions = query_positions
        self.padding_mask = padding_mask
        self.dtype = dtype
        self.fresh = fresh  # no earlier tokens: keys are exactly the queries
        self._built: dict[int | None, tuple[torch.Tensor | None, bool]] = {}

    def get(self, window: int | None, key_positions: torch.Tensor) -> tuple[torch.Tensor | None, bool]:
        if window not in self._built:
            seq = self.query_positions.shape[-1]
            own_keys = self.fresh and key_positions.shape[0] == seq  # not a preallocated buffer
            if own_keys and self.padding_mask is None and (window is None or window >= seq):
                self._built[window] = (None, True)  # plain causal: the kernels' own fast path
            else:
                mask = build_attention_mask(self.query_positions, key_positions, self.padding_mask, window, self.dtype)
                self._built[window] = (mask, False)
        return self._built[window]


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec, layer_idx: int, backend: str) -> None:
        super().__init__()
        self.input_layernorm = make_norm(spec.norm, spec.hidden_size, spec.norm_eps, spec.norm_bias)
        self.self_attn = DecoderAttention(spec, layer_idx, backend)
        self.post_attention_layernorm = make_norm(spec.norm, spec.hidden_size, spec.norm_eps, spec.norm_bias)
        if spec.num_experts:
            self.mlp = SparseMoE(
                spec.hidden_size, spec.intermediate_size, spec.num_experts, spec.experts_per_token,
                spec.activation, spec.router_jitter,
            )
        elif spec.mlp == "gated":
            self.mlp = GatedMLP(spec.hidden_size, spec.intermediate_size, spec.activation, spec.mlp_bias)
        else:
            self.mlp = PlainMLP(spec.hidden_size, spec.intermediate_size, spec.activation, spec.mlp_bias)
        self.residual_dropout = spec.residual_dropout
        self.attention_output_dropout = spec.residual_dropout if spec.dropout_after_attention else 0.0

    def forward(self, x, rotary, masks, cache, need_weights):
        attn_out, weights = self.self_attn(self.input_layernorm(x), rotary, masks, cache, need_weights)
        x = x + F.dropout(attn_out, self.attention_output_dropout, self.training)
        mlp_out = self.mlp(self.post_attention_layernorm(x))
        router_logits = None
        if isinstance(mlp_out, tuple):
            mlp_out, router_logits = mlp_out
        x = x + F.dropout(mlp_out, self.residual_dropout, self.training)
        return x, weights, router_logits


class DecoderModel(PreTrainedModel):
    """The bare decoder: `forward(input_ids (batch, seq))` → last hidden state `(batch, seq, hidden)`.

    A family subclass sets `config_class` and implements `spec(config)`.
    """

    @classmethod
    def spec(cls, config: PretrainedConfig) -> DecoderSpec:
        raise NotImplementedError(f"{cls.__name__} must read its config into a DecoderSpec")

    @classmethod
    def name_map(cls, config: PretrainedConfig) -> list[Rule]:
        """Mistral-layout checkpoints: separate q/k/v and gate/up projections, per-expert w1/w2/w3."""
        spec = cls.spec(config)
        q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        rules = []
        for i in range(spec.num_layers):
            attn = f"layers.{i}.self_attn."
            for kind in ("weight", "bias") if spec.attention_bias else ("weight",):
                rules.append(concat(attn + f"qkv_proj.{kind}", [attn + f"{p}_proj.{kind}" for p in "qkv"], [q, kv, kv]))
            mlp = f"layers.{i}.mlp."
            if spec.num_experts:
                moe = f"layers.{i}.block_sparse_moe."
                experts = range(spec.num_experts)
                gate_up = concat("", ["w1", "w3"], [spec.intermediate_size] * 2)
                rules.append(stack(mlp + "experts.gate_up_proj",
                                   [moe + f"experts.{e}.{w}.weight" for e in experts for w in ("w1", "w3")], gate_up))
                rules.append(stack(mlp + "experts.down_proj", [moe + f"experts.{e}.w2.weight" for e in experts]))
                rules.append(rename(mlp + "gate.weight", moe + "gate.weight"))
            elif spec.mlp == "gated":
                for kind in ("weight", "bias") if spec.mlp_bias else ("weight",):
                    rules.append(concat(mlp + f"gate_up_proj.{kind}", [mlp + f"gate_proj.{kind}", mlp + f"up_proj.{kind}"],
                                        [spec.intermediate_size] * 2))
        return rules

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        spec = self.spec(config)
        self.decoder_spec = spec
        backend = config._attn_implementation
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size, spec.padding_idx)
        if spec.position == "learned":
            self.embed_positions = nn.Embedding(spec.max_position_embeddings, spec.hidden_size)
            self.rotary_emb = None
        else:
            rotary_dim = spec.rotary_dim or spec.head_dim
            self.rotary_emb = RotaryEmbedding(rotary_dim, spec.rope_parameters, spec.max_position_embeddings)
        self.layers = nn.ModuleList(DecoderLayer(spec, i, backend) for i in range(spec.num_layers))
        self.norm = make_norm(spec.norm, spec.hidden_size, spec.norm_eps, spec.norm_bias)
        self.post_init()

    def make_cache(self, kind: str = "dynamic", max_length: int | None = None) -> Cache:
        return make_cache(self.decoder_spec.layer_windows, kind, max_length)

    def run_layers(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.LongTensor,
        cache_position: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        fresh: bool,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None], list[torch.Tensor | None]]:
        """Positions, every layer and the final norm over `inputs_embeds (batch, seq, hidden)`.

        `fresh`: the cache holds no earlier tokens. Shapes and Python values here depend only on
        the arguments' shapes, so a one-token step over a static cache traces once for
        `torch.compile` (the cache's token count is advanced by the caller). Returns the normed
        hidden state and the per-layer hidden states, attention weights and router logits.
        """
        hidden = inputs_embeds
        rotary = None
        if self.rotary_emb is None:
            hidden = hidden + self.embed_positions(position_ids)
        else:
            rotary = self.rotary_emb(position_ids, hidden.dtype)
        hidden = F.dropout(hidden, self.decoder_spec.embedding_dropout, self.training)
        masks = MaskBuilder(cache_position, attention_mask, hidden.dtype, fresh=fresh)

        hidden, all_hidden, (all_attentions, all_router) = run_layer_stack(
            self, self.layers, hidden, (rotary, masks), cache, output_attentions, output_hidden_states
        )
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)
        return hidden, all_hidden, all_attentions, all_router

    @property
    def compilable_decode(self) -> bool:
        """Whether a one-token step traces without host syncs (dynamic NTK rotary reads the largest
        position on the host; quantized experts without lamina's expert kernels pick their weights
        there)."""
        dispatches_on_host = any(getattr(getattr(layer.mlp, "experts", None), "host_dispatch", False)
                                 for layer in self.layers)
        return not dispatches_on_host and (self.rotary_emb is None or self.rotary_emb.rope_type != "dynamic")

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        output_router_logits: bool | None = None,
        **_: Any,
    ):
        """`input_ids (batch, seq)` (or `inputs_embeds (batch, seq, hidden)`) after the tokens in
        `past_key_values`; `attention_mask (batch, past + seq)` is 1 for real tokens."""
        config = self.config
        inputs = prepare_inputs(
            self, input_ids, inputs_embeds, self.decoder_spec.vocab_size,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=return_dict,
            use_cache=use_cache, can_cache=True, past_key_values=past_key_values, cache_position=cache_position,
            position_ids=position_ids,
        )
        if output_router_logits is None:
            output_router_logits = getattr(config, "output_router_logits", False)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        cache = inputs.past_key_values
        hidden, all_hidden, all_attentions, all_router = self.run_layers(
            inputs_embeds, inputs.position_ids, inputs.cache_position, attention_mask, cache,
            fresh=inputs.past_length == 0, output_attentions=inputs.output_attentions,
            output_hidden_states=inputs.output_hidden_states,
        )
        if cache is not None:
            cache.advance(inputs.seq)

        fields = dict(
            last_hidden_state=hidden,
            past_key_values=cache if inputs.use_cache else None,
            hidden_states=tuple(all_hidden) if inputs.output_hidden_states else None,
            attentions=tuple(all_attentions) if inputs.output_attentions else None,
        )
        if self.decoder_spec.num_experts:
            out = MoeModelOutputWithPast(**fields, router_logits=tuple(all_router) if output_router_logits else None)
        else:
            out = BaseModelOutputWithPast(**fields)
        return finish(out, inputs.return_dict, config)


class DecoderTask(PreTrainedModel):
    """A head over the decoder, stored under `model` like the reference so checkpoint names match."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.base_model_class(config))

    @property
    def decoder(self) -> DecoderModel:
        return getattr(self, self.base_model_prefix)

    def run_base(self, **inputs: Any):
        """The decoder's output (a dataclass) for `inputs`."""
        return self.decoder(**inputs, return_dict=True)


class DecoderForCausalLM(DecoderTask, GenerationMixin):
    """`forward(input_ids, labels=…)` → logits `(batch, seq, vocab)` and the shifted LM loss."""

    tied_weights = {"lm_head.weight": "model.embed_tokens.weight"}
    # the loss takes `num_items_in_batch` (training.py), and `Trainer` counts labels after the shift
    accepts_loss_kwargs = True
    loss_type = "ForCausalLM"

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        spec = self.decoder.decoder_spec
        self.lm_head = Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.generation_config = GenerationConfig.from_model_config(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def decode_step(
        self,
        input_ids: torch.LongTensor,
        position_ids: torch.LongTensor,
        cache_position: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        cache: Cache,
    ) -> torch.Tensor:
        """`generate`'s cached step: the logits `(batch, vocab)` after the last of `input_ids (batch, new)`.

        Unlike `forward` it checks nothing on the host and leaves advancing the cache's token count
        to the caller, so with a static cache and an `attention_mask (batch, capacity)` covering
        the whole run (None: no padding), every step has the same shapes: one graph for
        `torch.compile`.
        """
        decoder = self.decoder
        hidden, *_ = decoder.run_layers(
            decoder.embed_tokens(input_ids), position_ids, cache_position, attention_mask, cache, fresh=False
        )
        return self.lm_head(hidden[:, -1])

    @property
    def compilable_decode(self) -> bool:
        return self.decoder.compilable_decode

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_router_logits: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Any,
    ):
        config = self.config
        moe = self.decoder.decoder_spec.num_experts > 0
        if moe:
            output_router_logits = config.output_router_logits if output_router_logits is None else output_router_logits
        outputs = self.run_base(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            cache_position=cache_position, output_router_logits=output_router_logits, **kwargs,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = causal_lm_loss(logits, labels, num_items_in_batch) if labels is not None else None
        fields = dict(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
        if not moe:
            return finish(CausalLMOutputWithPast(**fields), return_dict, config)
        aux_loss = None
        if output_router_logits:
            spec = self.decoder.decoder_spec
            aux_loss = load_balancing_loss(outputs.router_logits, spec.num_experts, spec.experts_per_token, attention_mask)
            if labels is not None:
                fields["loss"] = loss + config.router_aux_loss_coef * aux_loss.to(loss.device)
        output = MoeCausalLMOutputWithPast(**fields, aux_loss=aux_loss, router_logits=outputs.router_logits)
        return finish(output, return_dict, config)


class DecoderForSequenceClassification(DecoderTask):
    """Logits `(batch, num_labels)` pooled at each row's last non-pad token."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.score = Linear(self.decoder.decoder_spec.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs: Any):
        outputs = self.run_base(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)
        batch = logits.shape[0]
        last = last_token_index(input_ids, self.config.pad_token_id, batch)
        pooled = logits[torch.arange(batch, device=logits.device), last]
        loss = sequence_classification_loss(pooled, labels, self.config) if labels is not None else None
        output = SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled, past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
        return finish(output, return_dict, self.config)


class DecoderForTokenClassification(DecoderTask):
    """Logits `(batch, seq, num_labels)`."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout", None)
        self.dropout = nn.Dropout(0.1 if dropout is None else dropout)
        self.score = Linear(self.decoder.decoder_spec.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs: Any):
        outputs = self.run_base(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, **kwargs,
        )
        logits = self.score(self.dropout(outputs.last_hidden_state))
        loss = token_classification_loss(logits, labels) if labels is not None else None
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return finish(output, return_dict, self.config)


class DecoderForQuestionAnswering(QuestionAnsweringHead, DecoderTask):
    """Start and end logits `(batch, seq)` for extractive QA: the one QA head, taking its arguments
    in the order of transformers' decoders (`position_ids` third, `past_key_values` fourth)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, start_positions=None, end_positions=None, **inputs: Any):
        return super().forward(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, start_positions=start_positions,
            end_positions=end_positions, **inputs,
        )
