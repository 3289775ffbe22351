"""Finding, loading and saving tokenizer files, and `AutoTokenizer`.

What a directory holds decides the engine, in transformers' order of preference:
`tokenizer.json` (the Rust `tokenizers` library), Mistral's `tekken.json`, a sentencepiece
`tokenizer.model`, GPT-2's `vocab.json` + `merges.txt`, BERT's `vocab.txt`; a GGUF file is named
with `gguf_file=`. `special_tokens_map.json`, `tokenizer_config.json` and `chat_template.jinja`
then supply special tokens, padding side, maximum length and chat template; keyword arguments
override them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, TokenizerError
from ..hub import resolve_model_dir, take_hub_arguments
from .base import SPECIAL_TOKEN_NAMES, VERY_LARGE_INTEGER, PreTrainedTokenizerBase, Template
from .engines import RustEngine, SentencePieceEngine
from .formats import gpt2_document, read_json, tekken_document, wordpiece_document
from .gguf import gguf_tokenizer_parts

TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# the tokenizer classes by the names tokenizer_config.json's `tokenizer_class` gives them (with
# transformers' aliases); `classes` and `mluke`, which build on this module, fill it
TOKENIZER_CLASSES: dict[str, type[PreTrainedTokenizerBase]] = {}
# tokenizer_config.json keys lamina reads itself; the others are kept and written back
_HANDLED_KEYS = {
    *SPECIAL_TOKEN_NAMES,
    "additional_special_tokens",
    "extra_special_tokens",
    "added_tokens_decoder",
    "tokenizer_class",
    "auto_map",
    "model_max_length",
    "padding_side",
    "truncation_side",
    "chat_template",
    "clean_up_tokenization_spaces",
    "model_input_names",
    "add_bos_token",
    "add_eos_token",
    "do_lower_case",
    "strip_accents",
    "tokenize_chinese_chars",
    "name_or_path",
    "use_fast",
    "legacy",
    # from_pretrained arguments about fetching (a file may carry them), never written back; lamina
    # runs no remote code
    "revision",
    "cache_dir",
    "token",
    "local_files_only",
    "force_download",
    "trust_remote_code",
}


def load_tokenizer(
    name_or_path: str | os.PathLike,
    cls: type[PreTrainedTokenizerBase] | None = None,
    *,
    gguf_file: str | None = None,
    use_fast: bool = True,
    **overrides: Any,
) -> PreTrainedTokenizerBase:
    """The tokenizer in a directory or a single file (`tokenizer.json`, `tokenizer.model`,
    `tekken.json`, `vocab.txt`, `*.gguf`); `cls` fixes the class, otherwise tokenizer_config.json's
    `tokenizer_class` or the engine picks it."""
    path = _resolve(name_or_path, gguf_file, take_hub_arguments(overrides))
    if gguf_file is not None:
        path = path / gguf_file if path.is_dir() else path
    if path.suffix == ".gguf":
        return from_gguf(path, cls=cls, **overrides)
    directory = path if path.is_dir() else path.parent
    config: dict[str, Any] = {}
    template_file = None
    if path.is_dir():
        for name in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):
            if (directory / name).is_file():
                found = read_json(directory / name, name)
                if not isinstance(found, dict):
                    raise TokenizerError(f"{directory / name}: expected a JSON object, found {type(found).__name__}")
                config.update(found)
                template_file = directory / name if "chat_template" in found else template_file
        if (directory / CHAT_TEMPLATE_FILE).is_file():
            template_file = directory / CHAT_TEMPLATE_FILE
            try:
                config["chat_template"] = (directory / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
            except UnicodeDecodeError as err:
                raise TokenizerError(f"{directory / CHAT_TEMPLATE_FILE}: not UTF-8 text ({err})") from None
    config.update(overrides)
    if cls is None:
        named = str(config.get("tokenizer_class", ""))
        cls = TOKENIZER_CLASSES.get(named) or TOKENIZER_CLASSES.get(named.removesuffix("Fast"))
    if cls is not None and cls.vocab_files_names:
        # a class with vocabulary files of its own (mLUKE's) reads them itself
        return cls.from_vocab_files(directory, config, name_or_path=str(name_or_path))
    engine, template, default_cls = _engine_for(path, config, cls, use_fast)
    cls = cls or default_cls
    tokenizer = build_tokenizer(cls, engine, config, template, name_or_path=str(name_or_path))
    if template_file is not None and "chat_template" not in overrides:
        tokenizer.chat_template_file = str(template_file)
    return tokenizer


def _resolve(name_or_path: str | os.PathLike, gguf_file: str | None, hub: dict[str, Any]) -> Path:
    """The tokenizer's file or directory, local or fetched with the Hub arguments `hub` (a revision,
    a token: never stored on the tokenizer)."""
    try:
        return resolve_model_dir(name_or_path, allow_file=True, weights_file=gguf_file, weights=False, **hub)
    except CheckpointError as err:
        raise TokenizerError(str(err)) from None


def _engine_for(
    path: Path, config: dict[str, Any], cls: type[PreTrainedTokenizerBase] | None, use_fast: bool
) -> tuple[Any, Template | None, type[PreTrainedTokenizerBase]]:
    """(engine, the template its files state or None, the class to use when none is named)."""
    if path.is_file():
        candidates = {path.name: path}
    else:
        candidates = {p.name: p for p in path.iterdir() if p.is_file()}
    tekken = [p for name, p in candidates.items() if name.endswith(".json") and "tekken" in name]
    sentencepiece = candidates.get("tokenizer.model") or next(
        (p for name, p in candidates.items() if name.endswith(".model") or ".model." in name), None
    )
    if "tokenizer.json" in candidates and (use_fast or sentencepiece is None):
        engine = RustEngine.from_file(candidates["tokenizer.json"])
        return engine, _stated_template(engine), TOKENIZER_CLASSES["PreTrainedTokenizerFast"]
    if tekken:
        document, version = tekken_document(tekken[0])
        config.setdefault("mistral_instruct_version", version)
        return RustEngine(document, str(tekken[0])), None, TOKENIZER_CLASSES["_TekkenTokenizer"]
    if sentencepiece is not None:
        # mistral_common reads the instruct version off a file name such as "….model.v7"
        suffix = sentencepiece.name.rpartition(".model.")[2]
        if suffix[:1] == "v" and suffix[1:].isdigit():
            config.setdefault("mistral_instruct_version", suffix)
        return SentencePieceEngine(sentencepiece), None, TOKENIZER_CLASSES["LlamaTokenizer"]
    if "vocab.json" in candidates or "merges.txt" in candidates:
        directory = path if path.is_dir() else path.parent
        document = gpt2_document(directory / "vocab.json", directory / "merges.txt")
        return RustEngine(document, str(directory / "vocab.json")), None, TOKENIZER_CLASSES["GPT2Tokenizer"]
    if "vocab.txt" in candidates:
        bert_class = TOKENIZER_CLASSES["BertTokenizer"]
        bert = bert_class if cls is None or not issubclass(cls, bert_class) else cls
        settings = {**bert.class_defaults, **config}
        document = wordpiece_document(
            candidates["vocab.txt"],
            do_lower_case=bool(settings["do_lower_case"]),
            strip_accents=settings.get("strip_accents"),
            tokenize_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)),
            unk_token=_content(settings["unk_token"], "unk_token"),
        )
        return RustEngine(document, str(candidates["vocab.txt"])), None, bert_class
    where = path if path.is_dir() else path.name
    raise TokenizerError(
        f"{where}: no tokenizer files found; expected tokenizer.json, tekken.json, tokenizer.model, "
        "vocab.json + merges.txt, vocab.txt or a .gguf file (gguf_file=...)"
    )


def _stated_template(engine: RustEngine) -> Template:
    """The template `tokenizer.json`'s post_processor states (lamina applies it, the Rust library
    never sees it, so its shape is checked here)."""
    entry = engine.post_processor
    try:
        template = Template.from_post_processor(entry, engine.source)
    # a post_processor of the wrong shape: not an object, a missing or mistyped field
    except (AttributeError, KeyError, TypeError, IndexError, ValueError) as err:
        raise TokenizerError(f"{engine.source}: post_processor: expected a tokenizers post-processor, found "
                             f"{entry!r:.120} ({type(err).__name__}: {err})") from None
    pieces = [*template.single, *template.pair]
    valid = all((isinstance(p, str) or p in (0, 1)) and isinstance(t, int) and not isinstance(t, bool) and t >= 0
                for p, t in pieces)  # fmt: skip
    if not valid:
        raise TokenizerError(f"{engine.source}: post_processor: expected special tokens (strings), sequences A / B "
                             f"and type ids (integers >= 0), found {pieces!r:.120}")
    return template


def _content(value: Any, key: str) -> str | None:
    """A special token as tokenizer_config.json spells it: a string, or an AddedToken dict."""
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    _require(value is None or isinstance(value, str), key, "a special token as a string or {'content': ...}", value)
    return value


def _require(valid: bool, key: str, expected: str, found: Any) -> None:
    if not valid:
        raise TokenizerError(f"{TOKENIZER_CONFIG}: {key}: expected {expected}, found {found!r:.80}")


def _added_tokens(config: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """tokenizer_config.json's `added_tokens_decoder`, `{"id": {"content": ..., "special": ...}}`, by id."""
    entries = config.get("added_tokens_decoder") or {}
    _require(isinstance(entries, dict), "added_tokens_decoder", "an object of id → token", entries)
    for key, entry in entries.items():
        # JSON keys are strings; ids of more digits than any vocabulary has would overflow the engine
        valid_id = isinstance(key, int) and key >= 0 or isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 10
        _require(valid_id, "added_tokens_decoder", "token ids (integers >= 0) as keys", key)
        _require(isinstance(entry, dict) and isinstance(entry.get("content"), str), f"added_tokens_decoder[{key!r}]",
                 "an object with a string 'content'", entry)
    return sorted((int(i), e) for i, e in entries.items())


def from_gguf(
    source: str | os.PathLike | Any, cls: type[PreTrainedTokenizerBase] | None = None, **overrides: Any
) -> PreTrainedTokenizerBase:
    """The tokenizer a GGUF file (a path or an open `gguf.GGUFReader`) embeds; keyword arguments
    override what the file says (as tokenizer_config.json entries would)."""
    default_class, engine, config, name = gguf_tokenizer_parts(source, overrides)
    tokenizer = build_tokenizer(cls or TOKENIZER_CLASSES[default_class], engine, config, None, name_or_path=name)
    tokenizer.chat_template_file = name
    return tokenizer


def build_tokenizer(
    cls: type[PreTrainedTokenizerBase],
    engine: Any,
    config: dict[str, Any],
    template: Template | None,
    name_or_path: str = "",
) -> PreTrainedTokenizerBase:
    """A `cls` over `engine`, configured by tokenizer_config.json-style `config` on top of the
    class defaults. `template` is the one the engine's files state; `add_bos_token` /
    `add_eos_token` given in `config` replace it, and so do the class defaults when it is None."""
    settings = {**cls.class_defaults, **config}
    for token_id, entry in _added_tokens(config):
        if engine.id_to_token(token_id) != entry.get("content") and token_id != len(engine):
            raise TokenizerError(
                f"{TOKENIZER_CONFIG}: added_tokens_decoder gives id {token_id} to {entry.get('content')!r}, "
                f"but the vocabulary has {engine.id_to_token(token_id)!r} there (next free id {len(engine)})"
            )
        engine.add_tokens([entry["content"]], special=bool(entry.get("special", True)))
    specials = {name: _content(settings[name], name) for name in SPECIAL_TOKEN_NAMES if name in settings}
    unknown = [key for key in config if key.endswith("_token") and key not in SPECIAL_TOKEN_NAMES
               and key not in ("add_bos_token", "add_eos_token") and isinstance(config[key], (str, dict))]  # fmt: skip
    if unknown:
        raise TokenizerError(
            f"{TOKENIZER_CONFIG}: unknown special-token name(s) {unknown}; expected some of {list(SPECIAL_TOKEN_NAMES)}"
        )
    extra = settings.get("additional_special_tokens") or settings.get("extra_special_tokens") or []
    if isinstance(extra, dict):
        extra = list(extra.values())
    _require(isinstance(extra, (list, tuple)), "additional_special_tokens", "a list of tokens", extra)
    explicit_flags = "add_bos_token" in config or "add_eos_token" in config
    if issubclass(cls, TOKENIZER_CLASSES["BertTokenizer"]) and template is None:
        cls_token, sep = specials["cls_token"], specials["sep_token"]
        single = [(cls_token, 0), (0, 0), (sep, 0)]
        template = Template(single, [*single, (1, 1), (sep, 1)])
    elif explicit_flags or template is None:
        before = [specials["bos_token"]] if settings.get("add_bos_token") and specials.get("bos_token") else []
        after = [specials["eos_token"]] if settings.get("add_eos_token") and specials.get("eos_token") else []
        template = Template.around(before, after)
    chat_template = settings.get("chat_template")
    if isinstance(chat_template, list):
        named = all(isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("template"), str)
                    for e in chat_template)  # fmt: skip
        _require(named, "chat_template", "a string or a list of {'name': ..., 'template': ...}", chat_template)
        chat_template = {entry["name"]: entry["template"] for entry in chat_template}
    max_length = settings.get("model_max_length")
    number = isinstance(max_length, (int, float)) and not isinstance(max_length, bool)
    _require(max_length is None or number and max_length > 0, "model_max_length", "a positive number", max_length)
    names = settings.get("model_input_names")
    valid_names = names is None or isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
    _require(valid_names, "model_input_names", "a list of strings", names)
    return cls(
        engine,
        template,
        name_or_path=name_or_path,
        model_max_length=None if max_length is None or max_length >= VERY_LARGE_INTEGER else max_length,
        padding_side=settings.get("padding_side"),
        truncation_side=settings.get("truncation_side"),
        chat_template=chat_template,
        clean_up_tokenization_spaces=bool(settings.get("clean_up_tokenization_spaces", False)),
        model_input_names=settings.get("model_input_names"),
        additional_special_tokens=[_content(t, "additional_special_tokens") for t in extra],
        extra_config={k: v for k, v in config.items() if k not in _HANDLED_KEYS},
        **specials,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: Path) -> tuple[str, ...]:
    """Write `tokenizer` so that lamina and transformers' AutoTokenizer both load it."""
    directory.mkdir(parents=True, exist_ok=True)
    post_processor = tokenizer.template.to_post_processor(tokenizer.convert_tokens_to_ids)
    written = tokenizer.engine.save(directory, post_processor)
    config: dict[str, Any] = dict(tokenizer.extra_config)
    own_config, own_files = tokenizer.saved_config(directory)
    written += own_files
    name = type(tokenizer).__name__.removesuffix("Fast").lstrip("_")
    config["tokenizer_class"] = name if name in TOKENIZER_CLASSES else "PreTrainedTokenizerFast"
    config.update(tokenizer.special_tokens_map)
    if isinstance(tokenizer.engine, SentencePieceEngine):
        # a tokenizer.model has no template of its own; the flags carry it
        bos, eos = tokenizer.bos_token, tokenizer.eos_token
        single = tokenizer.template.single
        config["add_bos_token"] = bos is not None and single[0] == (bos, 0)
        config["add_eos_token"] = eos is not None and single[-1] == (eos, 0)
        # tokens beyond the sentencepiece model live only here
        config["added_tokens_decoder"] = {
            str(i): {"content": content, "special": special, "normalized": False, "lstrip": False,
                     "rstrip": False, "single_word": False}  # fmt: skip
            for i, (content, special) in sorted(tokenizer.engine.added_tokens().items())
        }
    config.update(
        model_max_length=tokenizer.model_max_length,
        padding_side=tokenizer.padding_side,
        truncation_side=tokenizer.truncation_side,
        clean_up_tokenization_spaces=tokenizer.clean_up_tokenization_spaces,
        model_input_names=tokenizer.model_input_names,
    )
    config.update(own_config)
    if isinstance(tokenizer.chat_template, str):
        (directory / CHAT_TEMPLATE_FILE).write_text(tokenizer.chat_template, encoding="utf-8")
        written.append(CHAT_TEMPLATE_FILE)
    elif isinstance(tokenizer.chat_template, dict):
        config["chat_template"] = [{"name": k, "template": v} for k, v in tokenizer.chat_template.items()]
    (directory / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    (directory / SPECIAL_TOKENS_MAP).write_text(
        json.dumps(tokenizer.special_tokens_map, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return tuple(str(directory / name) for name in [*written, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP])


class AutoTokenizer:
    """`AutoTokenizer.from_pretrained(dir_or_file)` picks the engine and class from the files."""

    def __init__(self) -> None:
        raise TypeError("AutoTokenizer is not instantiated; use AutoTokenizer.from_pretrained(path)")

    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike, **kwargs: Any) -> PreTrainedTokenizerBase:
        return load_tokenizer(name_or_path, **kwargs)
