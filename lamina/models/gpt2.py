"""GPT-2 (and Megatron-GPT2, which converts to it) on the one decoder.

LayerNorm, learned absolute positions, gelu_new plain MLP, biases everywhere, tied embeddings.
Checkpoints store every projection as a Conv1D `(in, out)`, transposed by the name map, with
q/k/v already fused in `c_attn`. Attention is scaled by `1/sqrt(head_dim)` only when
`scale_attn_weights`, and further by `1/(layer + 1)` when `scale_attn_by_inverse_layer_idx`;
`reorder_and_upcast_attn` computes scores and softmax in fp32. Both hold on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints.namemap import Rule, rename, transpose
from ..config import Layers, NonNegative, PretrainedConfig, Positive, Probability, Size, TokenId, require
from ..errors import UnsupportedError
from ..layers.heads import QuestionAnsweringHead, causal_lm_loss
from ..layers.mlp import Activation, activation
from ..outputs import ModelOutput, finish
from .decoder import (
    DecoderForCausalLM,
    DecoderForSequenceClassification,
    DecoderForTokenClassification,
    DecoderModel,
    DecoderSpec,
    DecoderTask,
)
from .forward import given_input


class GPT2Config(PretrainedConfig):
    model_type = "gpt2"
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }

    vocab_size: Size = 50257
    n_positions: Size = 1024
    n_embd: Size = 768
    n_layer: Layers = 12
    n_head: Size = 12
    n_inner: Size | None = None
    activation_function: Activation = "gelu_new"
    resid_pdrop: Probability = 0.1
    embd_pdrop: Probability = 0.1
    attn_pdrop: Probability = 0.1
    layer_norm_epsilon: Positive = 1e-5
    initializer_range: NonNegative = 0.02
    summary_type: str = "cls_index"
    summary_use_proj: bool = True
    summary_activation: str | None = None
    summary_proj_to_labels: bool = True
    summary_first_dropout: Probability = 0.1
    scale_attn_weights: bool = True
    use_cache: bool = True
    bos_token_id: TokenId | None = 50256
    eos_token_id: TokenId | list[TokenId] | None = 50256
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False

    def validate(self) -> None:
        super().validate()
        require(self.n_embd % self.n_head == 0, "n_head", f"a divisor of n_embd ({self.n_embd})", self.n_head)


def _renames(target: str, source: str) -> list[Rule]:
    return [rename(f"{target}.{kind}", f"{source}.{kind}") for kind in ("weight", "bias")]


def _conv1d(target: str, source: str) -> list[Rule]:
    """A Conv1D `(in, out)` weight becomes a Linear `(out, in)`; its bias only changes name."""
    return [transpose(f"{target}.weight", f"{source}.weight"), rename(f"{target}.bias", f"{source}.bias")]


class _GPT2:
    """What every GPT-2 class shares: old checkpoints' causal-mask buffers are dropped, and
    projections into the residual stream are initialised with std / sqrt(2 * layers)."""

    config: GPT2Config
    ignore_on_load = (r"(^|\.)attn\.bias$", r"(^|\.)attn\.masked_bias$")

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # type: ignore[misc]
        for name in ("o_proj", "down_proj"):
            projection = getattr(module, name, None)
            if isinstance(projection, nn.Linear) and not projection.weight.is_meta:
                std = self.config.initializer_range / (2 * self.config.n_layer) ** 0.5
                nn.init.normal_(projection.weight, mean=0.0, std=std)


class GPT2Model(_GPT2, DecoderModel):
    """`forward(input_ids (…, seq))` → `(…, seq, hidden)`; leading dims beyond the batch (the
    choices of `GPT2DoubleHeadsModel`) are flattened through the decoder and restored."""

    config_class = GPT2Config
    base_model_prefix = "transformer"

    @classmethod
    def spec(cls, config: GPT2Config) -> DecoderSpec:
        head_dim = config.n_embd // config.n_head
        scales = []
        for layer in range(config.n_layer):
            scale = head_dim**-0.5 if config.scale_attn_weights else 1.0
            scales.append(scale / (layer + 1) if config.scale_attn_by_inverse_layer_idx else scale)
        return DecoderSpec(
            vocab_size=config.vocab_size,
            hidden_size=config.n_embd,
            num_layers=config.n_layer,
            num_heads=config.n_head,
            num_kv_heads=config.n_head,
            head_dim=head_dim,
            intermediate_size=config.n_inner or 4 * config.n_embd,
            activation=config.activation_function,
            norm="layer",
            norm_eps=config.layer_norm_epsilon,
            attention_bias=True,
            output_bias=True,
            mlp="plain",
            mlp_bias=True,
            position="learned",
            max_position_embeddings=config.n_positions,
            attention_scales=scales,
            upcast_attention=config.reorder_and_upcast_attn,
            attention_dropout=float(config.attn_pdrop),
            residual_dropout=float(config.resid_pdrop),
            embedding_dropout=float(config.embd_pdrop),
        )

    @classmethod
    def name_map(cls, config: GPT2Config) -> list[Rule]:
        rules = [
            rename("embed_tokens.weight", "wte.weight"),
            rename("embed_positions.weight", "wpe.weight"),
            *_renames("norm", "ln_f"),
        ]
        for i in range(config.n_layer):
            ours, theirs = f"layers.{i}.", f"h.{i}."
            rules += [
                *_renames(ours + "input_layernorm", theirs + "ln_1"),
                *_renames(ours + "post_attention_layernorm", theirs + "ln_2"),
                *_conv1d(ours + "self_attn.qkv_proj", theirs + "attn.c_attn"),
                *_conv1d(ours + "self_attn.o_proj", theirs + "attn.c_proj"),
                *_conv1d(ours + "mlp.up_proj", theirs + "mlp.c_fc"),
                *_conv1d(ours + "mlp.down_proj", theirs + "mlp.c_proj"),
            ]
        return rules

    def __init__(self, config: GPT2Config) -> None:
        if config.add_cross_attention:
            raise UnsupportedError("GPT2Config.add_cross_attention: lamina's GPT-2 has no cross-attention layers")
        super().__init__(config)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ):
        """`token_type_ids` index the token embedding table too (GPT-2 has no separate one)."""
        given = given_input(input_ids, inputs_embeds)
        *lead, seq = given.shape if input_ids is not None else given.shape[:-1]

        def flat(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.reshape(-1, tensor.shape[-1])

        input_ids, attention_mask, token_type_ids, position_ids = map(
            flat, (input_ids, attention_mask, token_type_ids, position_ids)
        )
        if inputs_embeds is not None:
            inputs_embeds = inputs_embeds.reshape(-1, seq, inputs_embeds.shape[-1])
        if token_type_ids is not None:
            vocab = self.decoder_spec.vocab_size
            self.check_token_ids(token_type_ids, vocab)
            if inputs_embeds is None:
                self.check_token_ids(input_ids, vocab)
                inputs_embeds, input_ids = self.embed_tokens(input_ids), None
            inputs_embeds = inputs_embeds + self.embed_tokens(token_type_ids)
        out = super().forward(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, return_dict=True, **kwargs,
        )
        out.last_hidden_state = out.last_hidden_state.reshape(*lead, seq, -1)
        if out.hidden_states is not None:
            out.hidden_states = (*out.hidden_states[:-1], out.last_hidden_state)
        return finish(out, return_dict, self.config)


class _GPT2ArgumentOrder:
    """transformers' GPT-2 heads take `past_key_values` second and `token_type_ids` fourth; this
    keeps positional calls meaning what they mean there."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        return super().forward(  # type: ignore[misc]
            input_ids=input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
            token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs,
        )


class GPT2LMHeadModel(_GPT2, _GPT2ArgumentOrder, DecoderForCausalLM, base=GPT2Model):
    tied_weights = {"lm_head.weight": "transformer.embed_tokens.weight"}


class GPT2ForSequenceClassification(_GPT2, _GPT2ArgumentOrder, DecoderForSequenceClassification, base=GPT2Model):
    pass


class GPT2ForTokenClassification(_GPT2, _GPT2ArgumentOrder, DecoderForTokenClassification, base=GPT2Model):
    """GPT-2 names the head `classifier`; its dropout follows `classifier_dropout`, then
    `hidden_dropout`, then 0.1, like the decoder's."""

    @classmethod
    def name_map(cls, config: GPT2Config) -> list[Rule]:
        return [*super().name_map(config), *_renames("score", "classifier")]


class GPT2ForQuestionAnswering(_GPT2, QuestionAnsweringHead, DecoderTask, base=GPT2Model):
    """The one QA head in transformers' GPT-2 argument order (`token_type_ids` third)."""


class SequenceSummary(nn.Module):
    """One vector per sequence from `(…, seq, hidden)`: the last, first, mean, or `cls_index`
    token, then dropout, an optional projection (to `num_labels` or `hidden`), activation, dropout."""

    SUMMARY_TYPES = ("last", "first", "mean", "cls_index")

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.summary_type = getattr(config, "summary_type", "last")
        if self.summary_type not in self.SUMMARY_TYPES:
            raise UnsupportedError(f"summary_type: expected one of {self.SUMMARY_TYPES}, found {self.summary_type!r}")
        self.summary: nn.Module = nn.Identity()
        if getattr(config, "summary_use_proj", False):
            to_labels = getattr(config, "summary_proj_to_labels", False) and config.num_labels > 0
            self.summary = nn.Linear(config.hidden_size, config.num_labels if to_labels else config.hidden_size)
        name = getattr(config, "summary_activation", None)
        self.activation = activation(name) if name else (lambda x: x)
        self.first_dropout = float(getattr(config, "summary_first_dropout", 0.0) or 0.0)
        self.last_dropout = float(getattr(config, "summary_last_dropout", 0.0) or 0.0)

    def forward(self, hidden: torch.Tensor, cls_index: torch.LongTensor | None = None) -> torch.Tensor:
        if self.summary_type == "last":
            pooled = hidden[..., -1, :]
        elif self.summary_type == "first":
            pooled = hidden[..., 0, :]
        elif self.summary_type == "mean":
            pooled = hidden.mean(dim=-2)
        else:
            if cls_index is None:
                cls_index = torch.full(hidden.shape[:-2], hidden.shape[-2] - 1, dtype=torch.long, device=hidden.device)
            index = cls_index[..., None, None].expand(*cls_index.shape, 1, hidden.shape[-1])
            pooled = hidden.gather(-2, index).squeeze(-2)
        pooled = F.dropout(pooled, self.first_dropout, self.training)
        pooled = self.activation(self.summary(pooled))
        return F.dropout(pooled, self.last_dropout, self.training)


@dataclass
class GPT2DoubleHeadsModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    mc_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mc_logits: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class GPT2DoubleHeadsModel(GPT2LMHeadModel):
    """Language modelling plus multiple choice: `input_ids (batch, choices, seq)` → LM logits
    `(batch, choices, seq, vocab)` and `mc_logits (batch, choices)` read at `mc_token_ids`."""

    accepts_loss_kwargs = False  # its LM loss stays a mean over the batch, which the trainer averages

    def __init__(self, config: GPT2Config) -> None:
        config.num_labels = 1
        super().__init__(config)
        self.multiple_choice_head = SequenceSummary(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mc_token_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        mc_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ):
        outputs = self.run_base(
            input_ids=input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
            token_type_ids=token_type_ids, position_ids=position_ids, inputs_embeds=inputs_embeds,
            use_cache=use_cache, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        logits = self.lm_head(hidden)
        mc_logits = self.multiple_choice_head(hidden, mc_token_ids).squeeze(-1)
        mc_loss = None
        if mc_labels is not None:
            mc_loss = F.cross_entropy(mc_logits.view(-1, mc_logits.shape[-1]), mc_labels.view(-1).to(mc_logits.device))
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        output = GPT2DoubleHeadsModelOutput(
            loss=loss, mc_loss=mc_loss, logits=logits, mc_logits=mc_logits,
            past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return finish(output, return_dict, self.config)

