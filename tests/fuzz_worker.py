"""The worker process of tests/test_fuzz.py: reads one case a line (JSON: id, kind, path, out) on
stdin, runs lamina's reader for its kind under an alarm, and prints one JSON line per case:
`{"id", "outcome", "detail"}` with outcome "loaded", "lamina" (a LaminaError), "foreign" (any other
exception), "hang" (the alarm) or "wrote outside" (a file opened for writing, created, moved or
removed outside the case's output directory, seen by an audit hook). A crash is seen by the
parent as the end of this process's output.

    python -m tests.fuzz_worker ROOT    (ROOT: the only directory cases may write under)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

ALARM_SECONDS = 10
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# audit events that change the file system, and which of their arguments are paths
CHANGES = {"os.remove": (0,), "os.rename": (0, 1), "os.replace": (0, 1), "os.mkdir": (0,), "os.rmdir": (0,),
           "os.symlink": (0, 1), "os.link": (0, 1), "os.truncate": (0,), "os.chmod": (0,), "shutil.rmtree": (0,),
           "os.utime": (0,)}  # fmt: skip
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "and?"}]


class CaseTimeout(BaseException):
    """The alarm: a case ran past ALARM_SECONDS (a BaseException, so no reader swallows it)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout(f"still running after {ALARM_SECONDS} s")


class WriteGuard:
    """Records every file-system change outside `root` (an audit hook cannot be removed, so it
    stays installed and records only while `watching`)."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.seen: list[str] = []
        self.watching = False
        sys.addaudithook(self)

    def _outside(self, path: Any) -> bool:
        if isinstance(path, int) or path is None:  # a descriptor: its opening was checked
            return False
        resolved = os.path.realpath(os.fsdecode(path))
        return resolved != os.devnull and not resolved.startswith(self.root + os.sep)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.watching:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if writing and self._outside(path):
                self.seen.append(f"open({path!r}, {mode!r})")
        elif event in CHANGES:
            paths = [args[i] for i in CHANGES[event] if i < len(args)]
            if any(self._outside(p) for p in paths):
                self.seen.append(f"{event}{tuple(paths)!r}")


def run_case(kind: str, path: Path, out: Path) -> None:
    """Read the case's input the way a user would, with the reader for its kind."""
    import torch

    import lamina
    from lamina.checkpoints.adept import convert_adept_persimmon
    from lamina.checkpoints.megatron_bert import convert_megatron_bert
    from lamina.checkpoints.megatron_gpt2 import convert_megatron_gpt2

    if kind in ("hf", "mistral", "gguf"):
        model = lamina.AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3]]))
        if kind == "gguf":
            lamina.AutoTokenizer.from_pretrained(path)("hello world")
    elif kind == "megatron_gpt2":
        convert_megatron_gpt2(path, out / "hf")
    elif kind == "megatron_bert":
        convert_megatron_bert(path, out / "hf")
    elif kind == "adept":
        convert_adept_persimmon(path, out / "hf", tokenizer_model=path.parent / "adept_vocab.model")
    elif kind == "tokenizer":
        tokenizer = lamina.AutoTokenizer.from_pretrained(path)
        tokenizer("hello world")
        if tokenizer.chat_template is not None:
            tokenizer.apply_chat_template(CHAT, tokenize=False, render_timeout=2.0)
    elif kind == "chat":
        tokenizer = lamina.AutoTokenizer.from_pretrained(path.parent / "tokenizer")
        tokenizer.apply_chat_template(CHAT, chat_template=path.read_text(encoding="utf-8", errors="replace"),
                                      tokenize=False, render_timeout=2.0)  # fmt: skip
    else:
        raise ValueError(f"unknown case kind {kind!r}")


def main() -> None:
    from lamina.errors import LaminaError

    guard = WriteGuard(Path(sys.argv[1]))
    signal.signal(signal.SIGALRM, _on_alarm)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        guard.seen.clear()
        guard.watching = True
        outcome, detail = "loaded", ""
        signal.alarm(ALARM_SECONDS)
        try:
            run_case(case["kind"], Path(case["path"]), Path(case["out"]))
        except CaseTimeout as err:
            outcome, detail = "hang", str(err)
        except LaminaError as err:
            outcome, detail = "lamina", f"{type(err).__name__}: {err}"[:300]
        except Exception as err:  # what the fuzz test looks for
            frames = traceback.extract_tb(err.__traceback__)
            where = ", ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[-3:])
            outcome, detail = "foreign", f"{type(err).__name__}: {err} (at {where})"[:600]
        finally:
            signal.alarm(0)
            guard.watching = False
        if guard.seen:
            outcome, detail = "wrote outside", "; ".join(guard.seen)[:600]
        print(json.dumps({"id": case["id"], "outcome": outcome, "detail": detail}), flush=True)


if __name__ == "__main__":
    main()
