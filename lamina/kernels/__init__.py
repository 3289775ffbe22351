"""lamina's own CPU kernels: C++ compiled on first use with the machine's compiler and cached.

`linear_cpu.cpp` holds the int8, int4, bf16 and float32 matrix products for decoding (AVX2, and
AVX-512 VNNI / BF16 where the CPU has them; see its header), `attention_cpu.cpp` the attention of
one query over a cache, `decode_cpu.cpp` the native decode step (`torch.classes.lamina.DecodeStep`,
a whole token of a Llama-architecture decoder; `lamina.generation.native_step`), built from the
same row kernels and attention (`rows.h`, `attention.h`). `ops()` builds them into one library with
`-march=native` once per source, torch version, compiler, flags and CPU, into a cache directory
(`$LAMINA_KERNEL_CACHE`, else `$XDG_CACHE_HOME/lamina/kernels`, else `~/.cache/lamina/kernels`),
loads it into `torch.ops.lamina` and registers shape functions so `torch.compile` can trace the
ops. Where the CPU lacks AVX2, no C++ compiler is found, the build fails or `LAMINA_KERNELS=0` is
set, `ops()` returns None (once, with a warning naming the reason where it is not the user's
choice) and the quantized layers use PyTorch's packed kernels instead.

The first build is announced on stderr before it starts. A build is atomic and happens once: the
library is written under a temporary name and renamed into place, so a process never loads a
half-written file, and processes that start at the same time wait on a lock file beside it while
the first one builds, then load its library.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

SOURCES = [Path(__file__).with_name(name) for name in ("linear_cpu.cpp", "attention_cpu.cpp", "decode_cpu.cpp")]
HEADERS = [Path(__file__).with_name(name) for name in ("lanes.h", "rows.h", "attention.h")]  # included by the sources: part of the cache key
# -march=native: the AVX-512 VNNI paths where the CPU has them (the cache key names the CPU);
# -ffp-contract=off: `a * b + c` rounds twice, as PyTorch's element-wise ops do (the native step
# repeats their rounding), unless a kernel asks for an FMA
FLAGS = ["-O3", "-std=c++20", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared", "-w"]

# the library's operators (`torch.ops.lamina.*`); their shape functions are in `_register_fakes`
OPS = ("int4_linear", "int8_linear", "int4_expert_linear", "int8_expert_linear", "int8_split_linear",
       "int4_split_linear", "bf16_linear", "f32_linear", "decode_attention")

_state: dict[str, object] = {}  # "ops": the loaded namespace or None, "reason": why not


def ops() -> SimpleNamespace | None:
    """The compiled kernels (`OPS`), or None where they cannot run here. The first call builds or
    loads them (a build takes tens of seconds); under `torch.compile` use `loaded()`."""
    if "ops" not in _state:
        reason = _unusable_reason()
        if reason is None:
            try:
                torch.ops.load_library(str(_build()))
                _register_fakes()
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                last_line = (str(err).strip().splitlines() or [type(err).__name__])[-1]
                names = [source.name for source in SOURCES]
                reason = f"building {', '.join(names[:-1])} and {names[-1]} failed: {last_line}"
        if reason is None:
            _state["ops"] = SimpleNamespace(**{name: getattr(torch.ops.lamina, name) for name in OPS})
        else:
            _state["ops"] = None
            _state["reason"] = reason
            if os.environ.get("LAMINA_KERNELS") != "0":
                warnings.warn(f"lamina kernels unavailable ({reason}); PyTorch's kernels run instead", stacklevel=2)
    return _state["ops"]  # type: ignore[return-value]


def loaded() -> SimpleNamespace | None:
    """The kernels if `ops()` has already made them available, else None (never builds)."""
    return _state.get("ops")  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    """Why `ops()` is None (after it was called), or None."""
    return _state.get("reason")  # type: ignore[return-value]


def _unusable_reason() -> str | None:
    if os.environ.get("LAMINA_KERNELS") == "0":
        return "LAMINA_KERNELS=0"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"the CPU has no AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
    if _compiler() is None:
        return "no C++ compiler (set CXX or install g++)"
    return None


def cpu_has(*flags: str) -> bool:
    """Whether the CPU lists any of `flags` (as /proc/cpuinfo spells them: "avx512_vnni", "amx_int8")."""
    listed = set(_cpu_features().split())
    return any(flag in listed for flag in flags)


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def _cpu_features() -> str:
    """The CPU's feature flags (what `-march=native` compiles for), or "" where not listed."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")


def _cache_dir() -> Path:
    if os.environ.get("LAMINA_KERNEL_CACHE"):
        return Path(os.environ["LAMINA_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lamina" / "kernels"


def _flags() -> list[str]:
    """`FLAGS` and `$LAMINA_KERNEL_CFLAGS` (say `-mno-avx512f` to build the AVX2 paths on an AVX-512 CPU)."""
    return [*FLAGS, *os.environ.get("LAMINA_KERNEL_CFLAGS", "").split()]


def _command(compiler: str, output: Path) -> list[str]:
    torch_dir = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [compiler, *_flags(), f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
            *map(str, SOURCES), f"-L{torch_dir / 'lib'}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_dir / 'lib'}",
            "-o", str(output)]


def _build() -> Path:
    """The library for these sources, torch and compiler: from the cache, or compiled into it."""
    compiler = _compiler()
    identity = hashlib.sha256()
    for part in (*(source.read_bytes() for source in SOURCES + HEADERS), torch.__version__.encode(), compiler.encode(),
                 " ".join(_flags()).encode(), sys.platform.encode(), _cpu_features().encode()):
        identity.update(part + b"\0")
    target = _cache_dir() / f"lamina_kernels_{identity.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _announce(f"waiting for another process building lamina's CPU kernels into {target.parent}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_file():  # else built by the process we waited for
            _announce(f"building lamina's CPU kernels for this machine, once (about 30 s), into {target.parent}")
            _compile(compiler, target)
    return target


def _announce(message: str) -> None:
    print(f"lamina: {message}", file=sys.stderr, flush=True)


def _compile(compiler: str, target: Path) -> None:
    """Compile the library into `target`, which appears whole or not at all."""
    handle, partial = tempfile.mkstemp(prefix=target.stem, suffix=".so.partial", dir=target.parent)
    os.close(handle)
    try:
        done = subprocess.run(_command(compiler, Path(partial)), capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _register_fakes() -> None:
    """Output shapes for tracing (torch.compile, meta tensors), float32: the products'
    `(rows, weight rows)`, their expert variants' `(rows, out_features)` (their last argument) and
    attention's the query's."""

    def product(x: torch.Tensor, weight: torch.Tensor, *operands) -> torch.Tensor:
        return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)

    def expert_product(x: torch.Tensor, *operands) -> torch.Tensor:
        return x.new_empty((x.shape[0], operands[-1]), dtype=torch.float32)

    def attention(query: torch.Tensor, *operands) -> torch.Tensor:
        return torch.empty_like(query)

    for name in OPS:
        shape = attention if name == "decode_attention" else expert_product if "expert" in name else product
        torch.library.register_fake(f"lamina::{name}")(shape)
