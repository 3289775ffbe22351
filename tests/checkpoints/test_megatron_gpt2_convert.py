"""Megatron-LM GPT-2 → HF GPT-2: synthetic checkpoints of every QKV version, one and two
tensor-parallel ranks, old and new final-norm names, padded vocabularies trimmed or kept, in the
folder and zip layouts Megatron writes; transformers and lamina load the result with the
original logits. The output of transformers 4.46.3's own conversion script on the same inputs is
recorded in tests/fixtures/conversion (scripts/record_conversion_fixtures.py) and must be equal."""

import argparse
import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lamina.checkpoints.megatron import qkv_from_standard
from lamina.checkpoints.megatron_gpt2 import convert_megatron_gpt2
from lamina.errors import CheckpointError
from lamina.models.gpt2 import GPT2LMHeadModel

transformers = pytest.importorskip("transformers")

FIXTURES = Path(__file__).parent.parent / "fixtures" / "conversion"
HEADS, VOCAB, PADDED = 4, 100, 128


def split_tensor_parallel(whole, tp, version, num_heads):
    """Megatron's split of whole tensors (standard QKV order) into `tp` ranks in `version`'s order."""
    ranks = [{} for _ in range(tp)]
    for name, tensor in whole.items():
        if "query_key_value" in name:
            q, k, v = tensor.chunk(3)
            for r in range(tp):
                local = torch.cat([part.chunk(tp)[r] for part in (q, k, v)])
                ranks[r][name] = qkv_from_standard(local, version, num_heads // tp)
        elif name.endswith(("dense_h_to_4h.weight", "dense_h_to_4h.bias", "word_embeddings.weight",
                            "word_embeddings_for_head.weight")):
            for r, shard in enumerate(tensor.chunk(tp, 0)):
                ranks[r][name] = shard.clone()
        elif name.endswith(("attention.dense.weight", "dense_4h_to_h.weight")):
            for r, shard in enumerate(tensor.chunk(tp, 1)):
                ranks[r][name] = shard.clone()
        else:
            for r in range(tp):
                ranks[r][name] = tensor
    return ranks


def megatron_whole_tensors(reference, final_name, padded_rows=PADDED):
    """An HF GPT-2 model's weights under Megatron's names (vocab padded to `padded_rows`)."""
    state = reference.state_dict()
    config = reference.config
    padding = torch.randn(padded_rows - config.vocab_size, config.n_embd, generator=torch.Generator().manual_seed(5))
    whole = {
        "embedding.word_embeddings.weight": torch.cat([state["transformer.wte.weight"], padding]),
        "embedding.position_embeddings.weight": state["transformer.wpe.weight"],
    }
    for i in range(config.n_layer):
        hf, mg = f"transformer.h.{i}.", f"encoder.layers.{i}."
        whole.update({
            mg + "input_layernorm.weight": state[hf + "ln_1.weight"],
            mg + "input_layernorm.bias": state[hf + "ln_1.bias"],
            mg + "self_attention.query_key_value.weight": state[hf + "attn.c_attn.weight"].t(),
            mg + "self_attention.query_key_value.bias": state[hf + "attn.c_attn.bias"],
            mg + "self_attention.dense.weight": state[hf + "attn.c_proj.weight"].t(),
            mg + "self_attention.dense.bias": state[hf + "attn.c_proj.bias"],
            mg + "post_attention_layernorm.weight": state[hf + "ln_2.weight"],
            mg + "post_attention_layernorm.bias": state[hf + "ln_2.bias"],
            mg + "mlp.dense_h_to_4h.weight": state[hf + "mlp.c_fc.weight"].t(),
            mg + "mlp.dense_h_to_4h.bias": state[hf + "mlp.c_fc.bias"],
            mg + "mlp.dense_4h_to_h.weight": state[hf + "mlp.c_proj.weight"].t(),
            mg + "mlp.dense_4h_to_h.bias": state[hf + "mlp.c_proj.bias"],
        })
    whole[f"encoder.{final_name}.weight"] = state["transformer.ln_f.weight"]
    whole[f"encoder.{final_name}.bias"] = state["transformer.ln_f.bias"]
    return {k: v.contiguous() for k, v in whole.items()}


def rank_state(tensors, version, args, old_names):
    """The nested dict one Megatron rank saves; old checkpoints say `transformer`, not `encoder`."""
    encoder = {k.removeprefix("encoder."): v for k, v in tensors.items() if k.startswith("encoder.")}
    if old_names:
        encoder = {k.replace("self_attention.", "attention."): v for k, v in encoder.items()}
    language_model = {
        "embedding": {
            "word_embeddings": {"weight": tensors["embedding.word_embeddings.weight"]},
            "position_embeddings": {"weight": tensors["embedding.position_embeddings.weight"]},
        },
        "transformer" if old_names else "encoder": encoder,
    }
    state = {"model": {"language_model": language_model}, "iteration": 0}
    if version is not None:
        state["checkpoint_version"] = version
    if args is not None:
        state["args"] = args
    return state


def training_args(reference, tp, bias_gelu_fusion=False):
    config = reference.config
    return argparse.Namespace(
        num_layers=config.n_layer, hidden_size=config.n_embd, num_attention_heads=config.n_head,
        ffn_hidden_size=config.n_inner, max_position_embeddings=config.n_positions, padded_vocab_size=PADDED,
        tensor_model_parallel_size=tp, tokenizer_type="GPT2BPETokenizer", bias_gelu_fusion=bias_gelu_fusion,
        openai_gelu=True, params_dtype=torch.float32,
    )


def write_checkpoint(states, root, layout):
    if layout == "file":
        torch.save(states[0], root / "model_optim_rng.pt")
        return root / "model_optim_rng.pt"
    for r, state in enumerate(states):
        folder = root / "ckpt" / "release" / f"mp_rank_{r:02d}"
        folder.mkdir(parents=True)
        torch.save(state, folder / "model_optim_rng.pt")
    (root / "ckpt" / "latest_checkpointed_iteration.txt").write_text("release")
    if layout == "dir":
        return root / "ckpt"
    with zipfile.ZipFile(root / "megatron.zip", "w") as archive:
        for r in range(len(states)):
            name = f"release/mp_rank_{r:02d}/model_optim_rng.pt"
            archive.write(root / "ckpt" / name, name)
    return root / "megatron.zip"


# (checkpoint_version, tensor-parallel ranks, final norm name, keep padded vocab, training args, layout)
CASES = [
    (None, 1, "final_layernorm", False, False, "zip"),  # the oldest: no version, no args
    (0.0, 2, "final_layernorm", True, True, "dir"),
    (1.0, 1, "final_layernorm", False, True, "file"),
    (1.0, 2, "final_norm", True, False, "zip"),
    (2.0, 1, "final_norm", False, True, "dir"),
    (3.0, 2, "final_layernorm", False, True, "zip"),
]


@pytest.mark.parametrize("version,tp,final_name,keep_vocab,with_args,layout", CASES)
def test_synthetic_checkpoints_convert_to_the_original_model(tmp_path, version, tp, final_name, keep_vocab,
                                                            with_args, layout):
    activation = "gelu_fast" if version == 3.0 else "gelu_new"
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=24, n_embd=32, n_layer=2, n_head=HEADS, n_inner=48,
        activation_function=activation, initializer_range=0.2,
    )).eval()
    whole = megatron_whole_tensors(reference, final_name)
    args = training_args(reference, tp, bias_gelu_fusion=version == 3.0) if with_args else None
    states = [rank_state(t, version, args, old_names=version in (None, 0.0))
              for t in split_tensor_parallel(whole, tp, version or 0.0, HEADS)]
    src = write_checkpoint(states, tmp_path, layout)

    dst = convert_megatron_gpt2(src, tmp_path / "hf", vocab_size=None if keep_vocab else VOCAB,
                                num_heads=None if with_args else HEADS)
    config = json.loads((dst / "config.json").read_text())
    assert config["vocab_size"] == (PADDED if keep_vocab else VOCAB) and config["n_head"] == HEADS
    assert config["activation_function"] == activation and config["architectures"] == ["GPT2LMHeadModel"]
    theirs = transformers.GPT2LMHeadModel.from_pretrained(dst).eval()
    mine = GPT2LMHeadModel.from_pretrained(dst)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(ids).logits
        for converted in (theirs(ids).logits, mine(ids).logits):
            assert converted.shape[-1] == (PADDED if keep_vocab else VOCAB)
            assert (converted[..., :VOCAB] - expected).abs().max() <= 1e-4


def test_bad_inputs_are_named(tmp_path):
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=8, n_embd=16, n_layer=1, n_head=HEADS)).eval()
    whole = megatron_whole_tensors(reference, "final_layernorm")
    state = rank_state(whole, 2.0, training_args(reference, 1), old_names=False)
    torch.save(state, tmp_path / "ok.pt")
    with pytest.raises(CheckpointError, match="vocab_size 500"):
        convert_megatron_gpt2(tmp_path / "ok.pt", tmp_path / "out", vocab_size=500)
    state["model"]["language_model"]["encoder"]["layers.0.mlp.surprise.weight"] = torch.ones(2)
    torch.save(state, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="surprise"):
        convert_megatron_gpt2(tmp_path / "odd.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def fixture_cases(kind):
    """The recorded conversions of transformers 4.46.3's scripts of one kind (see the manifest)."""
    return [case for case in json.loads((FIXTURES / "manifest.json").read_text()) if case["kind"] == kind]


@pytest.mark.parametrize("case", fixture_cases("megatron_gpt2"), ids=lambda case: case["name"])
def test_same_output_as_the_transformers_4_conversion_script(tmp_path, case):
    dst = convert_megatron_gpt2(FIXTURES / case["input"], tmp_path / "hf", **case["lamina_kwargs"])
    ours = load_file(dst / "model.safetensors")
    theirs = load_file(FIXTURES / case["reference"])
    # the script also writes the causal-mask buffers (attn.bias, attn.masked_bias), which loading
    # ignores, and the lm_head that GPT-2 ties to wte
    compared = {k: v for k, v in theirs.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert torch.equal(compared.pop("lm_head.weight"), ours["transformer.wte.weight"])
    assert compared.keys() == ours.keys()
    for key, tensor in compared.items():
        assert tensor.dtype == ours[key].dtype and torch.equal(tensor, ours[key]), key
    config = json.loads((dst / "config.json").read_text())
    for key, value in case["reference_config"].items():
        assert config[key] == value, key


@pytest.mark.parametrize("tokenizer_type,expected_vocab", [(None, 50257), ("PretrainedFromHF", 50304)])
def test_auto_vocab_trims_gpt2_bpe_padding_only(tmp_path, tokenizer_type, expected_vocab):
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50304, n_positions=8, n_embd=8, n_layer=1, n_head=2)).eval()
    whole = megatron_whole_tensors(reference, "final_layernorm", padded_rows=50304)
    args = None
    if tokenizer_type is not None:
        args = training_args(reference, 1)
        args.tokenizer_type = tokenizer_type
    torch.save(rank_state(whole, 2.0, args, old_names=False), tmp_path / "model_optim_rng.pt")
    dst = convert_megatron_gpt2(tmp_path, tmp_path / "hf", num_heads=2)
    assert json.loads((dst / "config.json").read_text())["vocab_size"] == expected_vocab


def test_lamina_command_converts(tmp_path, capsys):
    from lamina import cli

    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=8, n_embd=16, n_layer=1, n_head=HEADS)).eval()
    state = rank_state(megatron_whole_tensors(reference, "final_norm"), 2.0, None, old_names=False)
    torch.save(state, tmp_path / "model_optim_rng.pt")
    status = cli.main(["convert-megatron-gpt2", str(tmp_path), str(tmp_path / "hf"), "--vocab-size", str(VOCAB),
                       "--num-heads", str(HEADS), "--dtype", "bfloat16"])
    assert status == 0 and "GPT2LMHeadModel" in capsys.readouterr().out
    converted = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    assert converted.dtype == torch.bfloat16 and converted.config.vocab_size == VOCAB
    assert cli.main(["convert-megatron-gpt2", str(tmp_path / "missing"), str(tmp_path / "x")]) == 1
    with pytest.raises(SystemExit):
        cli.main(["convert-megatron-gpt2", str(tmp_path), str(tmp_path / "x"), "--vocab-size", "lots"])
