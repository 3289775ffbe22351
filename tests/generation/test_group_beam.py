"""Diverse (group) beam search against transformers 4.46.3's (transformers 5 moved it out of its core),
recorded by scripts/record_group_beam_fixtures.py: the same sequences and scores, end tokens,
left padding, several end ids, length penalty, every `early_stopping` and processors included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lamina
from lamina.errors import ConfigError
from tests.pipelines.synthetic import write_checkpoint

FIXTURES = Path(__file__).parents[1] / "fixtures" / "group_beam"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    reference = json.loads((FIXTURES / "reference.json").read_text())
    assert reference["transformers"] == "4.46.3"
    path = write_checkpoint(reference["shapes"], reference["scale"], (FIXTURES / "config.json").read_text(),
                            tmp_path_factory.mktemp("mistral"))
    return reference, lamina.MistralForCausalLM.from_pretrained(path)


@pytest.mark.parametrize("case", range(4))
def test_sequences_and_scores_equal_transformers_4(recorded, case):
    reference, model = recorded
    expected = reference["cases"][case]
    out = model.generate(torch.tensor(reference["prompts"]), attention_mask=torch.tensor(reference["mask"]),
                         return_dict_in_generate=True, output_scores=True, **expected["settings"])
    assert out.sequences.tolist() == expected["sequences"]
    torch.testing.assert_close(out.sequences_scores, torch.tensor(expected["sequences_scores"]), rtol=1e-5, atol=1e-5)
    assert len(out.scores) == out.sequences.shape[1] - len(reference["prompts"][0])


@pytest.mark.parametrize("settings, named", [
    (dict(num_beams=4, num_beam_groups=3, diversity_penalty=1.0), "num_beam_groups"),
    (dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.0), "diversity_penalty"),
    (dict(num_beams=4, diversity_penalty=1.0), "diversity_penalty"),
])
def test_inconsistent_groups_are_refused(recorded, settings, named):
    with pytest.raises(ConfigError, match=named):
        recorded[1].generate(torch.tensor([[1, 5, 9]]), max_new_tokens=3, **settings)
