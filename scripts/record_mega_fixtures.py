"""Record MEGA reference outputs from transformers 4.46.3 (MEGA is gone from transformers 5).

Run with the environment that has transformers==4.46.3 (not lamina's own):

    /work/venv4/bin/python scripts/record_mega_fixtures.py

For every variant below it builds a tiny random MEGA model (seeded, eval mode so dropout is off),
and writes under tests/fixtures/mega/<variant>/:

- config.json + model.safetensors: the model, saved by transformers' own `save_pretrained`;
- reference.safetensors: for each recorded call `<call>`, its tensor inputs as `<call>.in.<arg>`
  and its outputs as `<call>.out.<field>` (tuples as `<call>.out.<field>.<i>`); greedy tokens of
  `generate` as `generate.prompt` / `generate.tokens`;
- calls.json: per call, the non-tensor keyword arguments (`use_cache`, `output_hidden_states`, …).

The variants cover every class and each switch the reference offers: the normalisation types,
both relative position biases, the three attention activations, chunking, bidirectional and
causal EMA / attention, token types, the normalised FFN, post-norm, truncation and untied heads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    MegaConfig,
    MegaForCausalLM,
    MegaForMaskedLM,
    MegaForMultipleChoice,
    MegaForQuestionAnswering,
    MegaForSequenceClassification,
    MegaForTokenClassification,
    MegaModel,
)

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mega"
VOCAB = 40
PAD = 1

TINY = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    num_hidden_layers=2,
    intermediate_size=24,
    ema_projection_size=4,
    shared_representation_size=8,
    nffn_hidden_size=32,
    max_positions=64,
    pad_token_id=PAD,
    eos_token_id=VOCAB - 1,
)
CAUSAL = dict(is_decoder=True, bidirectional=False)


def perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Move every parameter and norm statistic off its init value so that a weight loaded into
    the wrong place, or a bias ignored, changes the outputs visibly."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "rel_pos_bias" in name or name.endswith((".alpha", ".b_param")):
                param.copy_(0.5 * noise)  # the init (std 0.02) would make the positional bias invisible
            elif "word_embeddings" in name:
                param.copy_(noise)  # unit-scale embeddings keep greedy decoding from settling on one token
            else:
                param.add_(0.1 * noise)
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.2 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))


def ids(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, shape, generator=generator)


def right_padded_mask(batch: int, length: int, pad_rows: dict[int, int]) -> torch.Tensor:
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, count in pad_rows.items():
        mask[row, length - count :] = 0
    return mask


def flatten_output(output, prefix: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for field, value in output.items():
        if isinstance(value, torch.Tensor):
            tensors[f"{prefix}.{field}"] = value.detach().contiguous()
        elif field in ("hidden_states", "attentions"):
            for index, item in enumerate(value):
                tensors[f"{prefix}.{field}.{index}"] = item.detach().contiguous()
    return tensors


def record(name: str, model_class, config: dict, calls: dict[str, dict], generate: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1000)
    model = model_class(MegaConfig(**TINY, **config)).eval()
    perturb(model, generator)
    directory = OUT / name
    if directory.exists():
        shutil.rmtree(directory)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "generation_config.json").unlink(missing_ok=True)

    tensors: dict[str, torch.Tensor] = {}
    flags: dict[str, dict] = {}
    for call_name, kwargs in calls.items():
        kwargs = dict(kwargs)
        with torch.no_grad():
            output = model(**kwargs, return_dict=True)
        flags[call_name] = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
        for key, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{call_name}.in.{key}"] = value.clone()
        tensors.update(flatten_output(output, f"{call_name}.out"))
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise RuntimeError(f"{name}: reference produced non-finite values in {bad}")
    if generate is not None:
        prompt = generate.pop("prompt")
        tokens = model.generate(prompt, do_sample=False, pad_token_id=PAD, **generate)
        tensors["generate.prompt"] = prompt.clone()
        tensors["generate.tokens"] = tokens
        flags["generate"] = generate
    save_file(tensors, directory / "reference.safetensors")
    (directory / "calls.json").write_text(json.dumps(flags, indent=1, sort_keys=True) + "\n")


def main() -> None:
    g = torch.Generator().manual_seed(7)
    OUT.mkdir(parents=True, exist_ok=True)

    # -- encoders (bidirectional EMA, full attention) -------------------------------------------
    input_ids = ids(g, 2, 10)
    mask = right_padded_mask(2, 10, {1: 3})
    input_ids[1, -3:] = PAD
    token_types = torch.randint(0, 2, (2, 10), generator=g)
    hidden = dict(output_hidden_states=True, output_attentions=True)
    record(
        "model_scalenorm_rotary_softmax_types", MegaModel,
        dict(add_token_type_embeddings=True, relative_positional_bias="rotary"),
        {
            "plain": dict(input_ids=input_ids, token_type_ids=token_types, **hidden),
            "padded": dict(input_ids=input_ids, attention_mask=mask, token_type_ids=token_types, **hidden),
        },
    )
    mlm_labels = torch.full((2, 10), -100)
    mlm_labels[:, 2:6] = ids(g, 2, 4)
    record(
        "mlm_layernorm_simple_laplace", MegaForMaskedLM,
        dict(normalization_type="layernorm", relative_positional_bias="simple", attention_activation="laplace"),
        {
            "plain": dict(input_ids=input_ids, labels=mlm_labels, output_hidden_states=True),
            "padded": dict(input_ids=input_ids, attention_mask=mask, labels=mlm_labels, output_attentions=True),
        },
    )
    ids12 = ids(g, 2, 12)
    mask12 = right_padded_mask(2, 12, {1: 5})  # row 1: its last chunk is entirely padding
    record(
        "seqcls_rmsnorm_rotary_relu2_chunked", MegaForSequenceClassification,
        dict(normalization_type="rmsnorm", attention_activation="relu2", use_chunking=True, chunk_size=4, num_labels=3),
        {
            "plain": dict(input_ids=ids12, labels=torch.tensor([0, 2]), output_attentions=True),
            "padded": dict(input_ids=ids12, attention_mask=mask12, labels=torch.tensor([1, 2]), output_hidden_states=True),
        },
    )
    record(
        "seqcls_regression_scalenorm_simple_softmax_chunked", MegaForSequenceClassification,
        dict(relative_positional_bias="simple", use_chunking=True, chunk_size=4, num_labels=1),
        {
            "padded": dict(input_ids=ids12, attention_mask=mask12, labels=torch.tensor([0.5, -1.0])),
            "plain": dict(input_ids=ids12, output_attentions=True),
        },
    )
    record(
        "seqcls_multilabel_layernorm_rotary_softmax", MegaForSequenceClassification,
        dict(normalization_type="layernorm", num_labels=3, problem_type="multi_label_classification"),
        {"plain": dict(input_ids=input_ids, labels=torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))},
    )
    choice_ids = ids(g, 2, 3, 8)
    record(
        "mc_batchnorm_simple_softmax_types_nonffn", MegaForMultipleChoice,
        dict(normalization_type="batchnorm", relative_positional_bias="simple", add_token_type_embeddings=True,
             use_normalized_ffn=False),
        {
            "plain": dict(input_ids=choice_ids, token_type_ids=torch.randint(0, 2, (2, 3, 8), generator=g),
                          labels=torch.tensor([2, 0]), output_hidden_states=True),
            "padded": dict(input_ids=choice_ids, attention_mask=right_padded_mask(6, 8, {1: 2, 4: 3}).view(2, 3, 8),
                           labels=torch.tensor([1, 1])),
        },
    )
    tok_labels = torch.randint(0, 4, (2, 12), generator=g)
    tok_labels[1, -5:] = -100
    record(
        "tokcls_syncbatchnorm_rotary_laplace_chunked", MegaForTokenClassification,
        dict(normalization_type="syncbatchnorm", attention_activation="laplace", use_chunking=True, chunk_size=4,
             num_labels=4),
        {
            "plain": dict(input_ids=ids12, labels=tok_labels, output_hidden_states=True, output_attentions=True),
            "padded": dict(input_ids=ids12, attention_mask=mask12, labels=tok_labels),
        },
    )
    record(
        "qa_scalenorm_simple_relu2_postnorm", MegaForQuestionAnswering,
        dict(relative_positional_bias="simple", attention_activation="relu2", normalize_before_mega=False,
             normalize_before_ffn=False),
        {
            "plain": dict(input_ids=input_ids, start_positions=torch.tensor([1, 4]), end_positions=torch.tensor([3, 12])),
            "padded": dict(input_ids=input_ids, attention_mask=mask, start_positions=torch.tensor([0, 2]),
                           end_positions=torch.tensor([5, 6]), output_hidden_states=True),
        },
    )
    # one partial chunk: a bidirectional model takes a sequence shorter than the chunk
    record(
        "model_layernorm_rotary_softmax_short_chunk", MegaModel,
        dict(normalization_type="layernorm", use_chunking=True, chunk_size=16),
        {"plain": dict(input_ids=input_ids, attention_mask=mask, output_attentions=True)},
    )
    record(
        "model_scalenorm_simple_softmax_truncation", MegaModel,
        dict(relative_positional_bias="simple", truncation=4),
        {"plain": dict(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)},
    )
    # causal EMA under full attention, and causal attention under a bidirectional EMA
    record(
        "model_causal_ema_full_attention", MegaModel,
        dict(bidirectional=False),
        {"plain": dict(input_ids=input_ids, attention_mask=mask)},
    )
    record(
        "model_decoder_bidirectional_ema", MegaModel,
        dict(is_decoder=True, bidirectional=True),
        {"plain": dict(input_ids=input_ids, attention_mask=mask, use_cache=False)},
    )

    # -- causal LMs -----------------------------------------------------------------------------
    clm_mask = right_padded_mask(2, 10, {1: 3})
    clm_labels = input_ids.masked_fill(clm_mask == 0, -100)
    prompt = ids(g, 1, 5)
    record(
        "clm_scalenorm_rotary_softmax", MegaForCausalLM, dict(CAUSAL),
        {
            "labels": dict(input_ids=input_ids, attention_mask=clm_mask, labels=clm_labels, output_hidden_states=True),
            # use_cache=True takes the reference's other EMA code path (the state-returning one)
            "cached": dict(input_ids=input_ids, attention_mask=clm_mask, use_cache=True, output_attentions=True),
        },
        generate=dict(prompt=prompt, max_new_tokens=12, use_cache=True),
    )
    record(
        "clm_layernorm_simple_laplace_untied", MegaForCausalLM,
        dict(CAUSAL, normalization_type="layernorm", relative_positional_bias="simple", attention_activation="laplace",
             tie_word_embeddings=False, add_lm_hidden_dense_layer=False),
        {"labels": dict(input_ids=input_ids, labels=clm_labels, use_cache=False, output_hidden_states=True)},
        # the reference's cached steps divide laplace scores by 1 instead of the key count, so its
        # tokens are taken without the cache (each step recomputes the whole sequence)
        generate=dict(prompt=prompt, max_new_tokens=10, use_cache=False),
    )
    record(
        "clm_rmsnorm_rotary_relu2_postnorm", MegaForCausalLM,
        dict(CAUSAL, normalization_type="rmsnorm", attention_activation="relu2", normalize_before_mega=False,
             add_token_type_embeddings=True),
        {"labels": dict(input_ids=input_ids, token_type_ids=token_types, labels=clm_labels, use_cache=False)},
        generate=dict(prompt=ids(g, 2, 6), max_new_tokens=8, use_cache=False),
    )
    record(
        "clm_batchnorm_simple_softmax_chunked", MegaForCausalLM,
        dict(CAUSAL, normalization_type="batchnorm", relative_positional_bias="simple", use_chunking=True, chunk_size=4),
        {
            "labels": dict(input_ids=ids12, attention_mask=mask12, labels=ids12.masked_fill(mask12 == 0, -100),
                           use_cache=False, output_attentions=True),
            "cached": dict(input_ids=ids12, use_cache=True, output_hidden_states=True),
        },
    )
    record(
        "clm_scalenorm_rotary_laplace_chunked_nonffn", MegaForCausalLM,
        dict(CAUSAL, attention_activation="laplace", use_chunking=True, chunk_size=4, use_normalized_ffn=False),
        {"plain": dict(input_ids=ids12, use_cache=False, output_attentions=True)},
    )
    record(
        "clm_syncbatchnorm_rotary_softmax_chunked", MegaForCausalLM,
        dict(CAUSAL, normalization_type="syncbatchnorm", use_chunking=True, chunk_size=4, normalize_before_ffn=False),
        {"plain": dict(input_ids=ids12, attention_mask=mask12, use_cache=False)},
    )
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {len(list(OUT.iterdir()))} fixtures, {total / 1e6:.2f} MB, under {OUT}")


if __name__ == "__main__":
    main()
