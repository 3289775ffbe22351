"""Record MegatronBERT references from transformers 4.46.3: models with relative position
embeddings (transformers 5 dropped `position_embedding_type`) and the output of its Megatron BERT
conversion script.

Run with the environment that has transformers==4.46.3:

    /work/venv4/bin/python scripts/record_megatron_bert_fixtures.py

For each model variant it builds a tiny seeded model, moves every parameter off its init value,
and writes under tests/fixtures/megatron_bert/<variant>/ the model (config.json +
model.safetensors, by transformers' own `save_pretrained`) and reference.safetensors holding the
inputs (`input_ids`, `attention_mask`, `token_type_ids`) and the outputs (`logits`,
`hidden_states.<i>`).

For each checkpoint version it converts the synthetic checkpoint of
scripts/synthetic_megatron_bert.py with the script's `convert_megatron_checkpoint` (the way its
`main` does) and writes tests/fixtures/megatron_bert/convert_v<version>/ with the config.json and
the converted tensors (converted.safetensors).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import MegatronBertConfig, MegatronBertForCausalLM, MegatronBertForMaskedLM
from transformers.models.megatron_bert.convert_megatron_bert_checkpoint import convert_megatron_checkpoint

from synthetic_megatron_bert import build_checkpoint

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "megatron_bert"
TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
            max_position_embeddings=16, type_vocab_size=2)
VARIANTS = {
    "mlm_relative_key": (MegatronBertForMaskedLM, dict(position_embedding_type="relative_key")),
    "mlm_relative_key_query": (MegatronBertForMaskedLM, dict(position_embedding_type="relative_key_query")),
    "clm_relative_key_query": (MegatronBertForCausalLM, dict(position_embedding_type="relative_key_query",
                                                             is_decoder=True)),
}


def record(name: str, model_class: type, overrides: dict) -> None:
    torch.manual_seed(0)
    model = model_class(MegatronBertConfig(**TINY, **overrides)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    directory = OUT / name
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(directory, safe_serialization=True)
    input_ids = torch.randint(1, TINY["vocab_size"], (2, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 4:] = 1
    extra = {"use_cache": False} if overrides.get("is_decoder") else {}
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                    output_hidden_states=True, **extra)
    tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
               "logits": out.logits}
    tensors.update({f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states)})
    save_file({k: v.contiguous() for k, v in tensors.items()}, directory / "reference.safetensors")


CHECKPOINT_VERSIONS = (0.0, 1.0, 3.0)


def record_conversion(version: float) -> None:
    state = build_checkpoint(version=version)[0]
    config = MegatronBertConfig()
    config.vocab_size = state["model"]["lm_head"]["bias"].numel()
    converted = convert_megatron_checkpoint(None, state, config)
    directory = OUT / f"convert_v{version:g}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    config.save_pretrained(directory)
    save_file({k: v.clone().contiguous() for k, v in converted.items()}, directory / "converted.safetensors")


if __name__ == "__main__":
    for variant, (cls, extra) in VARIANTS.items():
        record(variant, cls, extra)
    for checkpoint_version in CHECKPOINT_VERSIONS:
        record_conversion(checkpoint_version)
