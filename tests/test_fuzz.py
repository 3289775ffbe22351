"""Seeded fuzzing of every file lamina reads: truncations, byte flips and length lies in
safetensors headers, GGUF headers and metadata, `.bin` zips, Megatron and Adept checkpoints, every
JSON file (config.json, generation_config.json, tokenizer files, params.json) and chat templates.

Each case must load or raise a `LaminaError`: no other exception, no hang (an alarm per case), no
crash (the cases run in `tests/fuzz_worker.py`, restarted when it dies) and no file written
outside the case's own directory (an audit hook). `LAMINA_FUZZ_SEED` picks another seed; a failing
case's files stay under pytest's tmp_path, named in the failure.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

SEED = int(os.environ.get("LAMINA_FUZZ_SEED", "20261206"))
CASES_PER_SEED = 150  # × 14 seed files: about 2,100 cases, two minutes on 2 cores
WORKER_SILENCE = 60  # seconds without an answer before the worker is taken for hung in native code
# the values a length or count field is most often wrong with
LIES = [0, 1, 7, 8, 255, 4096, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
JSON_VALUES = [None, True, -1, 0, 2**64, 1e308, -1e-308, "x", "", [], {}, [1, 2], {"a": 1}, "NaN", 10**30]
TEMPLATE_PIECES = ["{{ 'a' * 10**9 }}", "{% for i in range(10**7) %}", "{% endfor %}", "{{ ''.__class__ }}",
                   "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "{{ messages[0]['content'] * 99999999 }}",
                   "{% set ns = namespace(x=1) %}{% set ns.x = ns.x ~ ns.x %}", "{{ raise_exception('no') }}",
                   "{{ (range(99999)|list)|join(',') * 999 }}", "{% if %}", "{{ 1 / 0 }}", "{{ x.y.z }}",
                   "{%- for m in messages -%}", "{{ messages|tojson(indent=2) }}", "{{ '%999999999s' % 1 }}"]  # fmt: skip


# -- seed files: one small valid input per reader -------------------------------------------------


def _tiny_mistral() -> torch.nn.Module:
    import lamina

    torch.manual_seed(0)
    config = lamina.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return lamina.MistralForCausalLM(config)


def _tokenizer_dir(directory: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory.mkdir(parents=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "hi": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")  # fmt: skip
    config = {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "model_max_length": 64, "chat_template": template,
              "added_tokens_decoder": {"1": {"content": "<s>", "special": True}}}  # fmt: skip
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (directory / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}, indent=1))
    return directory


def _megatron_gpt2(directory: Path) -> Path:
    from tests.checkpoints import test_megatron_gpt2_convert as mg

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=mg.VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=mg.HEADS, n_inner=64))  # fmt: skip
    whole = mg.megatron_whole_tensors(reference, "final_layernorm")
    state = mg.rank_state(whole, 3.0, mg.training_args(reference, 1), old_names=False)
    directory.mkdir(parents=True)
    torch.save(state, directory / "model_optim_rng.pt")
    return directory / "model_optim_rng.pt"


def _megatron_bert(directory: Path) -> Path:
    from scripts.synthetic_megatron_bert import build_checkpoint

    directory.mkdir(parents=True)
    torch.save(build_checkpoint(version=3.0)[0], directory / "model_optim_rng.pt")
    return directory / "model_optim_rng.pt"


def _adept(directory: Path) -> Path:
    from tests.checkpoints import test_adept

    state = test_adept.adept_ranks(test_adept.tiny_reference(), 1, True)[0]
    directory.mkdir(parents=True)
    torch.save(state, directory / "model_optim_rng.pt")
    shutil.copyfile(test_adept.SPM, directory / "adept_vocab.model")
    return directory / "model_optim_rng.pt"


def _mistral_original(directory: Path) -> Path:
    from tests.checkpoints import test_mistral_original

    test_mistral_original.write_original(test_mistral_original._hf_model("mistral"), "mistral", directory)
    return directory


def _gguf(path: Path) -> Path:
    from tests.checkpoints.test_gguf import write_gguf
    from tests.test_cli import _tokenizer_metadata

    path.parent.mkdir(parents=True)
    write_gguf(path, extra_metadata=_tokenizer_metadata)
    return path


# -- mutations: each takes the bytes, the spots worth aiming at (headers: (start, end) ranges) and
# the case's rng, and returns the mutated bytes and what was done


def _place(spots: list[tuple[int, int]], rng: random.Random) -> int:
    start, end = rng.choice(spots)
    return rng.randrange(start, max(end, start + 1))


def _truncate(data: bytes, spots: list[tuple[int, int]], rng: random.Random) -> tuple[bytes, str]:
    cut = _place(spots, rng) if rng.random() < 0.7 else rng.randrange(len(data))
    return data[:cut], f"truncated at {cut}"


def _flip(data: bytes, spots: list[tuple[int, int]], rng: random.Random) -> tuple[bytes, str]:
    out = bytearray(data)
    places = [min(_place(spots, rng), len(data) - 1) for _ in range(rng.randint(1, 8))]
    for place in places:
        out[place] = rng.randrange(256) if rng.random() < 0.5 else out[place] ^ (1 << rng.randrange(8))
    return bytes(out), f"bytes changed at {places}"


def _lie(data: bytes, spots: list[tuple[int, int]], rng: random.Random) -> tuple[bytes, str]:
    """Replace a little-endian u64 or u32 that looks like a length or count (a small number) by a
    lie: most length and count fields of safetensors, GGUF and zip headers are such numbers."""
    width = rng.choice((8, 4))
    code = "<Q" if width == 8 else "<I"
    found = [at for start, end in spots for at in range(start, min(end, len(data) - width))
             if 0 < struct.unpack_from(code, data, at)[0] < 1 << 20]  # fmt: skip
    at = rng.choice(found) if found else 0
    value = rng.choice([*LIES, len(data), len(data) - at, rng.randrange(1 << (8 * width))]) % (1 << (8 * width))
    return data[:at] + struct.pack(code, value) + data[at + width :], f"u{8 * width} at {at} set to {value}"


def _json_change(data: bytes, spots: list[tuple[int, int]], rng: random.Random) -> tuple[bytes, str]:
    """A valid JSON document with one value replaced, a number lied about, or deep nesting."""
    try:
        document = json.loads(data)
    except ValueError:
        return _flip(data, spots, rng)
    choice = rng.random()
    if choice < 0.2:
        depth = rng.choice((100, 1000, 100_000))
        return data[:1] + b'"deep": ' + b"[" * depth + b"]" * depth + b", " + data[1:], f"nesting {depth} deep"
    if choice < 0.45:
        numbers = [m for m in re.finditer(rb"-?\d+(\.\d+)?", data)]
        if numbers:
            hit = rng.choice(numbers)
            lie = str(rng.choice(LIES + [-1, -(2**63)])).encode()
            return data[: hit.start()] + lie + data[hit.end() :], f"number at {hit.start()} set to {lie.decode()}"
    paths = list(_json_paths(document))
    if not paths:
        return _flip(data, spots, rng)
    path = rng.choice(paths)
    value = rng.choice(JSON_VALUES)
    return json.dumps(_replaced(document, path, value)).encode(), f"{'/'.join(map(str, path))} set to {value!r}"


def _json_paths(value: object, prefix: tuple = ()):  # noqa: ANN202
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = list(enumerate(value))[:20]
    else:
        return
    for key, item in items:
        yield (*prefix, key)
        yield from _json_paths(item, (*prefix, key))


def _replaced(document: object, path: tuple, value: object) -> object:
    if not path:
        return value
    copy = dict(document) if isinstance(document, dict) else list(document)  # type: ignore[call-overload]
    copy[path[0]] = _replaced(copy[path[0]], path[1:], value)
    return copy


def _template_change(data: bytes, spots: list[tuple[int, int]], rng: random.Random) -> tuple[bytes, str]:
    text = data.decode()
    if rng.random() < 0.5:
        return _flip(data, spots, rng) if rng.random() < 0.5 else _truncate(data, spots, rng)
    at = rng.randrange(len(text) + 1)
    piece = rng.choice(TEMPLATE_PIECES)
    return (text[:at] + piece + text[at:]).encode(), f"{piece!r} inserted at {at}"


BINARY = (_truncate, _flip, _lie)
JSON = (_truncate, _flip, _json_change, _json_change)


def _whole(data: bytes) -> list[tuple[int, int]]:
    return [(0, len(data))]


def _safetensors_header(data: bytes) -> list[tuple[int, int]]:
    return [(0, min(len(data), 8 + struct.unpack_from("<Q", data)[0] + 16))]


def _gguf_header(data: bytes) -> list[tuple[int, int]]:
    return [(0, min(len(data), 6000))]  # magic, counts, metadata and tensor infos of the tiny file


def _zip_headers(data: bytes) -> list[tuple[int, int]]:
    """torch.save's zip: every local and central directory header, and the pickle (data.pkl)."""
    import io
    import zipfile

    spots = [(m.start(), m.start() + 64) for m in re.finditer(rb"PK\x01\x02|PK\x03\x04|PK\x05\x06|PK\x06\x06", data)]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.filename.endswith(".pkl"):
                spots.append((info.header_offset, info.header_offset + 30 + len(info.filename) + 64 + info.compress_size))
    return spots


# (seed name, kind, how to build it (returns the file or directory the reader gets), and per file to
# mutate (relative to that directory; "" for the file itself): its mutations and where to aim them)
SEEDS: list[tuple[str, str, Callable[[Path], Path], list[tuple[str, tuple, Callable[[bytes], list]]]]] = [
    ("hf-safetensors", "hf", lambda d: _save(d, True), [
        ("model.safetensors", BINARY, _safetensors_header), ("config.json", JSON, _whole),
        ("generation_config.json", JSON, _whole)]),
    ("hf-bin", "hf", lambda d: _save(d, False), [("pytorch_model.bin", BINARY, _zip_headers)]),
    ("gguf", "gguf", lambda d: _gguf(d / "tiny.gguf"), [("", BINARY, _gguf_header)]),
    ("megatron-gpt2", "megatron_gpt2", _megatron_gpt2, [("", BINARY, _zip_headers)]),
    ("megatron-bert", "megatron_bert", _megatron_bert, [("", BINARY, _zip_headers)]),
    ("adept", "adept", _adept, [("", BINARY, _zip_headers)]),
    ("mistral-original", "mistral", _mistral_original, [
        ("params.json", JSON, _whole), ("consolidated.safetensors", BINARY, _safetensors_header)]),
    ("tokenizer", "tokenizer", _tokenizer_dir, [
        ("tokenizer.json", JSON, _whole), ("tokenizer_config.json", JSON, _whole),
        ("special_tokens_map.json", JSON, _whole)]),
    ("chat", "chat", lambda d: _chat_template(d), [("template.jinja", (_template_change,), _whole)]),
]  # fmt: skip


def _save(directory: Path, safe: bool) -> Path:
    _tiny_mistral().save_pretrained(directory, safe_serialization=safe)
    return directory


def _chat_template(directory: Path) -> Path:
    _tokenizer_dir(directory / "tokenizer")
    config = json.loads((directory / "tokenizer" / "tokenizer_config.json").read_text())
    (directory / "template.jinja").write_text(config["chat_template"])
    return directory / "template.jinja"


def _cases(root: Path) -> list[dict]:
    """Every case's files, written under `root`, and its description for the worker."""
    cases = []
    for name, kind, build, targets in SEEDS:
        seed_root = build(root / "seeds" / name)
        seed_dir = seed_root if seed_root.is_dir() else seed_root.parent
        # the seed itself first: it must load, or its mutations test nothing
        cases.append({"id": f"{name}-seed", "kind": kind, "path": str(seed_root), "out": str(root / "seeds-out" / name),
                      "how": "unchanged"})  # fmt: skip
        for file, mutations, aim in targets:
            original = (seed_dir / file if file else seed_root).read_bytes()
            spots = aim(original)
            for number in range(CASES_PER_SEED):
                rng = random.Random(f"{SEED}:{name}:{file}:{number}")
                mutation = rng.choice(mutations)
                data, how = mutation(original, spots, rng)
                case_dir = root / "cases" / f"{name}-{file or 'file'}-{number}"
                shutil.copytree(seed_dir, case_dir / "in")
                target = case_dir / "in" / (file or seed_root.name)
                target.write_bytes(data)
                loaded = case_dir / "in" if seed_root.is_dir() else case_dir / "in" / seed_root.name
                cases.append({"id": case_dir.name, "kind": kind, "path": str(loaded), "out": str(case_dir / "out"),
                              "how": f"{file or seed_root.name}: {mutation.__name__.strip('_')}, {how}"})  # fmt: skip
    return cases


class Worker:
    """The worker process, started again whenever it dies or hangs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        env = {**os.environ, "HOME": str(home), "TMPDIR": str(home), "XDG_CACHE_HOME": str(home / "cache"),
               "TORCHINDUCTOR_CACHE_DIR": str(home / "inductor"), "PYTHONDONTWRITEBYTECODE": "1",
               "LAMINA_KERNELS": "0", "HF_HUB_OFFLINE": "1"}  # fmt: skip
        self.process = subprocess.Popen([sys.executable, "-m", "tests.fuzz_worker", str(self.root)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, env=env, cwd=Path(__file__).parents[1])  # fmt: skip
        assert json.loads(self._line(600) or "{}").get("ready"), "the fuzz worker did not start"

    def _line(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return self.process.stdout.readline() if ready else None

    def run(self, case: dict) -> dict:
        if self.process is None or self.process.poll() is not None:
            self.start()
        self.process.stdin.write(json.dumps(case) + "\n")
        self.process.stdin.flush()
        line = self._line(WORKER_SILENCE)
        if line:
            return json.loads(line)
        self.process.kill()
        self.process.wait()
        code = self.process.returncode
        self.process = None
        return {"id": case["id"], "outcome": "crash" if line == "" else "hang", "detail": f"worker exit {code}"}

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


@pytest.mark.slow
def test_fuzzed_files_load_or_raise_a_lamina_error(tmp_path):
    pytest.importorskip("transformers")
    cases = _cases(tmp_path)
    worker = Worker(tmp_path)
    start = time.monotonic()
    outcomes, failures = {}, []
    try:
        for case in cases:
            result = worker.run(case)
            outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1
            allowed = ("loaded",) if case["how"] == "unchanged" else ("loaded", "lamina")
            if result["outcome"] not in allowed:
                failures.append(f"{case['id']} ({case['how']}): {result['outcome']}: {result['detail']}")
    finally:
        worker.close()
    print(f"{len(cases)} cases in {time.monotonic() - start:.0f} s: {outcomes}")
    assert outcomes.get("lamina", 0) > len(cases) // 4 and outcomes.get("loaded", 0) > len(SEEDS), outcomes
    report = f"{len(failures)} of {len(cases)} cases failed (inputs under {tmp_path}):\n" + "\n".join(failures)
    assert not failures, report
