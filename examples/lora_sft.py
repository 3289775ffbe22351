"""LoRA fine-tuning of the default model (SmolLM2-135M-Instruct) on a text file, on the CPU.

    pip install -e '.[demo,peft]'
    python examples/lora_sft.py --text notes.txt --steps 40 --out lora-run

Trains rank-8 adapters on every projection (the names transformers users write: q_proj … down_proj)
over blocks of the text's tokens, prints the loss, writes the adapters in PEFT's format (they load
onto transformers' model of the same checkpoint as well) and the loss curve as an SVG picture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

import lamina
from lamina.cli import default_model

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def token_blocks(tokenizer, text: str, block: int) -> torch.Tensor:
    """The text's tokens cut into rows of `block` tokens `(rows, block)` (the tail is dropped)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    rows = len(ids) // block
    if rows == 0:
        raise SystemExit(f"the text has {len(ids)} tokens, fewer than one block of {block}")
    return torch.tensor(ids[: rows * block]).view(rows, block)


def loss_curve_svg(losses: list[float], path: Path, width: int = 640, height: int = 360) -> None:
    """A line chart of `losses` per step, with the first and last values labelled."""
    margin = 50
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0
    steps = max(len(losses) - 1, 1)

    def point(step: int, loss: float) -> str:
        x = margin + (width - 2 * margin) * step / steps
        y = height - margin - (height - 2 * margin) * (loss - low) / span
        return f"{x:.1f},{y:.1f}"

    points = " ".join(point(i, loss) for i, loss in enumerate(losses))
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n'
        f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" stroke="black"/>\n'
        f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="black"/>\n'
        f'<polyline points="{points}" fill="none" stroke="steelblue" stroke-width="2"/>\n'
        f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">step (1..{len(losses)})</text>\n'
        f'<text x="{margin - 5}" y="{margin}" text-anchor="end">{high:.2f}</text>\n'
        f'<text x="{margin - 5}" y="{height - margin}" text-anchor="end">{low:.2f}</text>\n'
        f'<text x="{width / 2}" y="25" text-anchor="middle">LoRA SFT loss ({losses[0]:.2f} → {losses[-1]:.2f})</text>\n'
        "</svg>\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", type=Path, default=Path(__file__).resolve().parents[1] / "README.md",
                        help="the text to train on (default: lamina's README)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--block", type=int, default=64, help="tokens per row")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path("lora-run"))
    args = parser.parse_args()

    torch.manual_seed(0)
    path = default_model()
    tokenizer = lamina.AutoTokenizer.from_pretrained(path)
    model = lamina.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS))
    model.print_trainable_parameters()
    blocks = token_blocks(tokenizer, args.text.read_text(), args.block)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model.train()
    losses = []
    for step in range(args.steps):
        rows = torch.randint(len(blocks), (args.batch,))
        loss = model(input_ids=blocks[rows], labels=blocks[rows], use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        print(f"step {step + 1}/{args.steps}: loss {losses[-1]:.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out / "adapter")
    loss_curve_svg(losses, args.out / "loss.svg")
    print(f"adapters in {args.out / 'adapter'}, loss curve in {args.out / 'loss.svg'}")


if __name__ == "__main__":
    main()
