"""Progress bars for long loads and conversions: tqdm on stderr, counting tensors (or shards)
done of the total and the bytes behind them. Shown only where stderr is a terminal and the
process has not asked for quiet (`set_quiet(True)`; `lamina --quiet`)."""

from __future__ import annotations

import sys

from tqdm import tqdm

_settings = {"quiet": False}
MIN_INTERVAL = 0.25  # seconds between redraws


def set_quiet(quiet: bool) -> None:
    """Switch the progress bars off (True) or back on where stderr is a terminal (False)."""
    _settings["quiet"] = quiet


class ProgressBar(tqdm):
    """A tqdm bar of items done / total whose postfix is the bytes they held."""

    def __init__(self, total: int, description: str, unit: str) -> None:
        hidden = _settings["quiet"] or not sys.stderr.isatty()
        super().__init__(total=total, desc=description, unit=f" {unit}", file=sys.stderr, leave=False,
                         mininterval=MIN_INTERVAL, miniters=1, disable=hidden)  # fmt: skip
        self.bytes_done = 0

    def advance(self, items: int, nbytes: int) -> None:
        """`items` more done, which held `nbytes`."""
        self.bytes_done += nbytes
        self.set_postfix_str(f"{self.bytes_done / 2**20:,.1f} MiB", refresh=False)
        self.update(items)
