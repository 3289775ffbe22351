"""Mixtral: Mistral whose MLP is a sparse mixture of experts (top-k of `num_local_experts`)."""

from __future__ import annotations

from .decoder import (
    DecoderForCausalLM,
    DecoderForQuestionAnswering,
    DecoderForSequenceClassification,
    DecoderForTokenClassification,
    DecoderModel,
    DecoderSpec,
)
from .decoder_config import llama_like_spec
from .mistral import MistralConfig
from ..config import NonNegative, Positive, Size, Window, require


class MixtralConfig(MistralConfig):
    model_type = "mixtral"
    attribute_map = {"num_experts": "num_local_experts"}
    default_theta = 1e6

    rms_norm_eps: Positive = 1e-5
    sliding_window: Window | None = None
    num_experts_per_tok: Size = 2
    num_local_experts: Size = 8
    output_router_logits: bool = False
    router_aux_loss_coef: float = 0.001
    router_jitter_noise: NonNegative = 0.0

    def validate(self) -> None:
        super().validate()
        require(self.num_experts_per_tok <= self.num_local_experts, "num_experts_per_tok",
                f"at most num_local_experts ({self.num_local_experts})", self.num_experts_per_tok)


class MixtralModel(DecoderModel):
    config_class = MixtralConfig

    @classmethod
    def spec(cls, config: MixtralConfig) -> DecoderSpec:
        return llama_like_spec(
            config,
            num_experts=config.num_local_experts,
            experts_per_token=config.num_experts_per_tok,
            router_jitter=config.router_jitter_noise,
        )


class MixtralForCausalLM(DecoderForCausalLM, base=MixtralModel):
    pass


class MixtralForSequenceClassification(DecoderForSequenceClassification, base=MixtralModel):
    pass


class MixtralForTokenClassification(DecoderForTokenClassification, base=MixtralModel):
    pass


class MixtralForQuestionAnswering(DecoderForQuestionAnswering, base=MixtralModel):
    pass
