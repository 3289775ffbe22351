"""Record transformers 4.46.3's diverse (group) beam search, which transformers 5 moved out of its
core, for `tests/generation/test_group_beam.py`.

Run with the environment that has transformers==4.46.3, from the repository root:

    /work/venv446/bin/python scripts/record_group_beam_fixtures.py

The tiny Mistral's weights are drawn from its parameters' names (`tests/pipelines/synthetic.py`),
so tests/fixtures/group_beam/ holds only config.json and reference.json: the parameters' names and
shapes and, per case, the prompts, the `generate` settings and the sequences and scores it returned.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.pipelines.synthetic import synthetic_state  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "group_beam"
SCALE = 0.6  # peaked enough that end tokens win some beams
CONFIG = transformers.MistralConfig(
    vocab_size=24, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
PROMPTS = [[1, 5, 9, 13, 7, 3], [0, 0, 1, 11, 4, 8]]  # the second left-padded
MASK = [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]]
CASES = [
    dict(num_beams=6, num_beam_groups=3, diversity_penalty=1.0, max_new_tokens=10),
    dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5, max_new_tokens=12, num_return_sequences=3,
         length_penalty=0.6, early_stopping=True),
    dict(num_beams=4, num_beam_groups=4, diversity_penalty=2.0, max_new_tokens=8, early_stopping="never",
         repetition_penalty=1.3, num_return_sequences=4),
    dict(num_beams=6, num_beam_groups=2, diversity_penalty=0.3, max_new_tokens=9, no_repeat_ngram_size=2,
         eos_token_id=[2, 5], num_return_sequences=2),
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    model = transformers.MistralForCausalLM(CONFIG).eval()
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    model.load_state_dict(synthetic_state(shapes, SCALE))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        (OUT / "config.json").write_text((Path(tmp) / "config.json").read_text())
    cases = []
    for settings in CASES:
        with torch.no_grad():
            out = model.generate(torch.tensor(PROMPTS), attention_mask=torch.tensor(MASK), do_sample=False,
                                 return_dict_in_generate=True, output_scores=True, **settings)
        cases.append(dict(settings=settings, sequences=out.sequences.tolist(),
                          sequences_scores=out.sequences_scores.tolist()))
    reference = dict(transformers=transformers.__version__, scale=SCALE, shapes=shapes, prompts=PROMPTS, mask=MASK,
                     cases=cases)
    (OUT / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")


if __name__ == "__main__":
    main()
