"""MEGA against transformers 4.46.3, through fixtures recorded by scripts/record_mega_fixtures.py.

Each fixture directory holds a tiny random model saved by the reference, the inputs of a few calls
and the reference's outputs; lamina loads the directory with `from_pretrained` and must match
(fp32 ≤ 1e-4, losses ≤ 1e-5), including greedy `generate` tokens where the reference recorded them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lamina
from lamina.models import mega

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mega"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if (p / "reference.safetensors").is_file())


def load_fixture(name: str):
    directory = FIXTURES / name
    architecture = json.loads((directory / "config.json").read_text())["architectures"][0]
    model = getattr(lamina, architecture).from_pretrained(directory)
    return model, load_file(directory / "reference.safetensors"), json.loads((directory / "calls.json").read_text())


def call_inputs(reference: dict[str, torch.Tensor], flags: dict, call: str) -> dict:
    prefix = f"{call}.in."
    kwargs = {k[len(prefix):]: v for k, v in reference.items() if k.startswith(prefix)}
    return {**kwargs, **flags}


def test_every_class_and_switch_is_covered():
    configs = [json.loads((FIXTURES / n / "config.json").read_text()) for n in NAMES]
    assert {c["architectures"][0] for c in configs} == {
        "MegaModel", "MegaForCausalLM", "MegaForMaskedLM", "MegaForSequenceClassification",
        "MegaForMultipleChoice", "MegaForTokenClassification", "MegaForQuestionAnswering",
    }
    assert {c["normalization_type"] for c in configs} == {"scalenorm", "layernorm", "rmsnorm", "batchnorm", "syncbatchnorm"}
    assert {c["attention_activation"] for c in configs} == {"softmax", "laplace", "relu2"}
    assert {c["relative_positional_bias"] for c in configs} == {"simple", "rotary"}
    for switch in ("use_chunking", "bidirectional", "is_decoder", "add_token_type_embeddings", "use_normalized_ffn",
                   "normalize_before_mega"):
        assert {c.get(switch, False) for c in configs} == {True, False}, switch  # HF omits a default is_decoder


@pytest.mark.parametrize("name", NAMES)
def test_outputs_match_reference(name):
    model, reference, calls = load_fixture(name)
    for call, flags in calls.items():
        if call == "generate":
            continue
        with torch.no_grad():
            output = model(**call_inputs(reference, flags, call), return_dict=True)
        prefix = f"{call}.out."
        expected = {k[len(prefix):]: v for k, v in reference.items() if k.startswith(prefix)}
        assert expected
        for key, want in expected.items():
            field, _, index = key.partition(".")
            got = getattr(output, field)
            if index:
                got = got[int(index)]
            tolerance = 1e-5 if field == "loss" else 1e-4
            assert got.shape == want.shape, (call, key)
            torch.testing.assert_close(got.float(), want.float(), atol=tolerance, rtol=0, msg=f"{name} {call} {key}")


@pytest.mark.parametrize("name", [n for n in NAMES if "generate" in json.loads((FIXTURES / n / "calls.json").read_text())])
def test_greedy_generation_matches_reference(name):
    model, reference, calls = load_fixture(name)
    settings = calls["generate"]
    tokens = model.generate(reference["generate.prompt"], max_new_tokens=settings["max_new_tokens"], do_sample=False)
    assert tokens.tolist() == reference["generate.tokens"].tolist()
    # lamina's cache is exact for every variant, so cached decoding gives the same tokens
    cached = model.generate(reference["generate.prompt"], max_new_tokens=settings["max_new_tokens"], do_sample=False,
                            use_cache=True)
    assert cached.tolist() == reference["generate.tokens"].tolist()


@pytest.mark.parametrize("name", [  # batch-norm statistics, rotary placeholder, tied and untied heads
    "mc_batchnorm_simple_softmax_types_nonffn", "clm_scalenorm_rotary_softmax", "clm_layernorm_simple_laplace_untied",
    "mlm_layernorm_simple_laplace", "tokcls_syncbatchnorm_rotary_laplace_chunked",
])
def test_save_round_trip_keeps_every_checkpoint_key(name, tmp_path):
    model, _, _ = load_fixture(name)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    original = load_file(FIXTURES / name / "model.safetensors")
    assert sorted(saved) == sorted(original)
    for key, tensor in original.items():
        assert torch.equal(saved[key], tensor), key
    assert isinstance(type(model).from_pretrained(tmp_path), mega.MegaPreTrainedModel)


def test_auto_classes_dispatch_to_mega():
    from lamina import AutoConfig, AutoModelForMaskedLM, AutoModelForMultipleChoice

    assert isinstance(AutoConfig.from_pretrained(FIXTURES / "mlm_layernorm_simple_laplace"), mega.MegaConfig)
    assert type(AutoModelForMaskedLM.from_pretrained(FIXTURES / "mlm_layernorm_simple_laplace")) is mega.MegaForMaskedLM
    model = AutoModelForMultipleChoice.from_pretrained(FIXTURES / "mc_batchnorm_simple_softmax_types_nonffn")
    assert type(model) is mega.MegaForMultipleChoice


REFERENCE_PYTHON = Path("/work/venv4/bin/python")


# run in the reference environment: load what lamina saved, replay a recorded call, compare logits
REPLAY = """
import sys, torch, transformers
from safetensors.torch import load_file
fixtures, saved = sys.argv[1], sys.argv[2]
for name, auto, call in [a.split(":") for a in sys.argv[3:]]:
    model, info = getattr(transformers, auto).from_pretrained(f"{saved}/{name}", output_loading_info=True)
    assert not any(info.values()), (name, info)
    ref = load_file(f"{fixtures}/{name}/reference.safetensors")
    inputs = {k.split(".")[-1]: v for k, v in ref.items() if k.startswith(call + ".in.") and not k.endswith("labels")}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits if "Causal" in auto else model(**inputs).logits
    assert (logits - ref[call + ".out.logits"]).abs().max() < 1e-4, name
print("ok")
"""


@pytest.mark.skipif(not REFERENCE_PYTHON.is_file(), reason="needs the transformers 4.46.3 environment of the fixtures")
def test_transformers_4_loads_what_lamina_saves(tmp_path):
    import subprocess

    cases = [("clm_batchnorm_simple_softmax_chunked", "AutoModelForCausalLM", "labels"),
             ("mlm_layernorm_simple_laplace", "AutoModelForMaskedLM", "plain")]
    for name, _, _ in cases:
        load_fixture(name)[0].save_pretrained(tmp_path / name)
    result = subprocess.run(
        [str(REFERENCE_PYTHON), "-c", REPLAY, str(FIXTURES), str(tmp_path), *(":".join(c) for c in cases)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.stdout.strip().endswith("ok"), result.stderr[-3000:]
