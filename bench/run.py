"""`python bench/run.py [lamina bench options]`: the benchmark of `lamina bench`, writing its
results into bench/RESULTS.md (see lamina/bench.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lamina.cli import main  # noqa: E402

if __name__ == "__main__":
    arguments = sys.argv[1:]
    if "--out" not in arguments:
        arguments += ["--out", str(Path(__file__).resolve().parent / "RESULTS.md")]
    sys.exit(main(["bench", *arguments]))
