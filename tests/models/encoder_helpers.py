"""Shared by the MegatronBERT and MobileBERT parity tests: build a reference model with every
weight moved off its init value, load it into lamina, and compare outputs and gradients."""

from __future__ import annotations

from pathlib import Path

import torch

import lamina


def perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every parameter off its init value, so a bias or norm weight that fails to load shows.
    Padding rows of embeddings stay zero, as training (which never updates them) leaves them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx] = 0


def build_pair(transformers, name: str, config, directory: Path, attn: str = "sdpa"):
    """(reference, lamina) instances of class `name` with the same seeded, perturbed weights."""
    torch.manual_seed(0)
    config._attn_implementation = "eager"  # the reference returns attention weights only from eager
    reference = getattr(transformers, name)(config).eval()
    perturb(reference)
    reference.save_pretrained(directory)
    ours = getattr(lamina, name).from_pretrained(directory, attn_implementation=attn)
    return reference, ours


def compare_outputs(reference_out, our_out, atol: float = 1e-4, loss_atol: float = 1e-5) -> None:
    """Every tensor field the reference returns (tuples element-wise) equals lamina's."""
    for key in reference_out.keys():
        if key == "past_key_values":
            continue
        theirs, ours = reference_out[key], our_out[key]
        if isinstance(theirs, tuple):
            assert len(theirs) == len(ours), f"{key}: {len(theirs)} entries in the reference, {len(ours)} in lamina"
            pairs = list(zip(theirs, ours))
        else:
            pairs = [(theirs, ours)]
        for a, b in pairs:
            assert a.shape == b.shape, f"{key}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
            diff = (a.float() - b.float()).abs().max().item()
            assert diff <= (loss_atol if key == "loss" else atol), f"{key} differs by {diff}"


def compare_grads(ours: torch.nn.Module, reference: torch.nn.Module, atol: float = 1e-4) -> None:
    """Each parameter's gradient equals the reference's, lamina's mapped to the reference's names
    and layouts by its name map (a fused projection is split as its weight would be)."""
    mine = ours.checkpoint_state_dict({name: p.grad for name, p in ours.named_parameters() if p.grad is not None})
    theirs = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    assert theirs, "the reference computed no gradient"
    for name, grad in theirs.items():
        assert name in mine, f"lamina has no gradient for {name}"
        diff = (mine[name] - grad).abs().max().item()
        assert diff <= atol, f"gradient of {name} differs by {diff}"
    assert set(mine) <= set(theirs), f"lamina has gradients the reference lacks: {set(mine) - set(theirs)}"


def batch(vocab: int, choices: int | None = None) -> dict[str, torch.Tensor]:
    """Two rows of 7 tokens, the second right-padded (with pad id 0) after 5, with token types."""
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1, vocab, (2, 7), generator=generator)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    types = torch.randint(0, 3, (2, 7), generator=generator)
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if choices:
        inputs = {k: v[:, None].repeat(1, choices, 1) for k, v in inputs.items()}
        inputs["input_ids"][:, 1:, 2] = 7  # the choices differ
    return inputs


def labels_for(suffix: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Labels for the head `suffix` (e.g. "ForMaskedLM") of a batch from `batch`."""
    ids = inputs["input_ids"]
    if suffix in ("ForMaskedLM", "ForCausalLM"):
        labels = ids.clone()
        labels[:, :2] = -100
        return dict(labels=labels)
    if suffix == "ForPreTraining":
        return dict(labels=ids.flip(-1), next_sentence_label=torch.tensor([0, 1]))
    if suffix in ("ForNextSentencePrediction", "ForMultipleChoice"):
        return dict(labels=torch.tensor([1, 0]))
    if suffix == "ForSequenceClassification":
        return dict(labels=torch.tensor([2, 0]))
    if suffix == "ForTokenClassification":
        return dict(labels=ids % 3)
    if suffix == "ForQuestionAnswering":
        return dict(start_positions=torch.tensor([1, 9]), end_positions=torch.tensor([3, 4]))
    return {}


def check_head(transformers, name: str, config, directory: Path, vocab: int) -> None:
    """Class `name` against the reference on a padded batch with token types and labels: every
    output (hidden states and attentions included), the loss and every gradient."""
    suffix = name[name.index("For"):] if "For" in name else "Model"
    reference, ours = build_pair(transformers, name, config, directory, attn="eager")
    inputs = batch(vocab, choices=3 if suffix == "ForMultipleChoice" else None)
    inputs.update(labels_for(suffix, inputs))
    flags = dict(output_hidden_states=True, output_attentions=True)
    expected, found = reference(**inputs, **flags), ours(**inputs, **flags)
    compare_outputs(expected, found)
    if suffix == "Model":
        (expected.last_hidden_state.sum() + expected.pooler_output.sum()).backward()
        (found.last_hidden_state.sum() + found.pooler_output.sum()).backward()
    else:
        expected.loss.backward()
        found.loss.backward()
    compare_grads(ours, reference)


def check_round_trip(transformers, family: str, config_kwargs: dict, directory: Path, vocab: int) -> None:
    """lamina's `{family}ForPreTraining` saved → transformers loads the same model; the checkpoint
    also loads into the base model (the heads dropped) and into another head (reported new)."""
    torch.manual_seed(0)
    ours = getattr(lamina, f"{family}ForPreTraining")(getattr(lamina, f"{family}Config")(**config_kwargs)).eval()
    ours.save_pretrained(directory)
    reference = getattr(transformers, f"{family}ForPreTraining").from_pretrained(directory).eval()
    inputs = batch(vocab)
    compare_outputs(reference(**inputs), ours(**inputs))
    _, info = getattr(lamina, f"{family}ForSequenceClassification").from_pretrained(directory, output_loading_info=True)
    assert "classifier.weight" in info.missing_keys
    base = lamina.AutoModel.from_pretrained(directory)
    assert type(base).__name__ == f"{family}Model"
    expected = getattr(reference, reference.base_model_prefix)(**inputs).last_hidden_state
    assert (base(**inputs).last_hidden_state - expected).abs().max() <= 1e-4


def check_auto_classes(family: str, config, tasks: list[str]) -> None:
    """Each Auto class `AutoModel{task}` builds `{family}{task}` from the config."""
    for task in tasks:
        assert type(getattr(lamina, f"AutoModel{task}").from_config(config)).__name__ == family + task
