"""Mistral's original checkpoint layout (mistral-inference): a directory with `params.json` and
`consolidated.safetensors` (or `consolidated.00.pth`), plus `tokenizer.model.v3` or `tekken.json`.

`load_mistral_original(directory)` answers `(HF config dict, tensors under HF names)` for Mistral,
Ministral (a per-layer `sliding_window` pattern) and Mixtral (`moe` parameters). Original q/k
projections keep each head's rotary pairs interleaved (Meta's layout); they are brought to the
rotate-half layout of transformers on access, as for GGUF.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import is_finite_number, is_integer
from ..errors import CheckpointError, UnsupportedError
from .interleaved import InterleavedRotaryTensors
from .io import SafetensorsFile, _load_bin, as_dtype

PARAMS = "params.json"
WEIGHT_FILES = ("consolidated.safetensors", "consolidated.00.pth")
TOKENIZER_FILES = ("tekken.json", "tokenizer.model.v3", "tokenizer.model.v2", "tokenizer.model.v1", "tokenizer.model")

_GLOBAL_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.gate.weight": "block_sparse_moe.gate.weight",
}
_LAYER_PATTERN = re.compile(r"layers\.(\d+)\.(.+)")
_EXPERT_PATTERN = re.compile(r"feed_forward\.experts\.(\d+)\.(w[123])\.weight")


def hf_name(name: str, where: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    match = _LAYER_PATTERN.fullmatch(name)
    if match:
        layer, rest = match.groups()
        if rest in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[rest]}"
        expert = _EXPERT_PATTERN.fullmatch(rest)
        if expert:
            return f"model.layers.{layer}.block_sparse_moe.experts.{expert.group(1)}.{expert.group(2)}.weight"
    raise CheckpointError(f"{where}: unexpected tensor {name!r} for Mistral's original layout")


def _layer_windows(params: dict[str, Any], layers: int, where: str) -> list[int | None]:
    """Per-layer windows: `sliding_window` is absent, one int, or a pattern repeated over the layers
    (Ministral); the largest entry of a mixed pattern means full attention."""
    window = params.get("sliding_window")
    if window is None:
        return [None] * layers
    pattern = window if isinstance(window, list) else [window]
    if not pattern or not all(is_integer(w) and w > 0 for w in pattern):
        raise CheckpointError(f"{where}: sliding_window: expected a positive int or a list of them, found {window!r}")
    windows = [pattern[i % len(pattern)] for i in range(layers)]
    if len(set(windows)) == 1:
        return windows
    longest = max(windows)
    return [None if w == longest else w for w in windows]


def hf_config(params: dict[str, Any], where: str, stored_layers: int) -> dict[str, Any]:
    """The HF `config.json` of a `params.json` (`stored_layers`: the layers the weights hold)."""

    def get(key: str, default: Any = None, table: dict[str, Any] = params) -> Any:
        # `key` as messages name it: "moe.num_experts" is "num_experts" of the `moe` table
        value = table.get(key.rpartition(".")[2], default)
        if value is None:
            raise CheckpointError(f"{where}: key {key!r} is missing")
        return value

    def count(key: str, default: Any = None, table: dict[str, Any] = params) -> int:
        value = get(key, default, table)
        if not (is_integer(value) and value > 0):
            raise CheckpointError(f"{where}: key {key!r}: expected a positive integer, found {value!r:.80}")
        return value

    def number(key: str, default: float | None = None) -> float:
        value = get(key, default)
        if not is_finite_number(value):
            raise CheckpointError(f"{where}: key {key!r}: expected a finite number, found {value!r:.80}")
        return float(value)

    layers, heads, hidden = count("n_layers"), count("n_heads"), count("dim")
    # the model (and its per-layer windows) is built with this many layers before a tensor is read
    if layers > stored_layers:
        raise CheckpointError(f"{where}: key 'n_layers' is {layers}, but the weights hold {stored_layers} layers")
    windows = _layer_windows(params, layers, where)
    sliding = [w for w in windows if w is not None]
    positions_key = "max_position_embeddings" if params.get("max_position_embeddings") is not None else "max_seq_len"
    config: dict[str, Any] = {
        "model_type": "mistral",
        "vocab_size": count("vocab_size"),
        "hidden_size": hidden,
        "intermediate_size": count("hidden_dim"),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": count("n_kv_heads", heads),
        "head_dim": count("head_dim", hidden // heads),
        "rms_norm_eps": number("norm_eps"),
        "rope_theta": number("rope_theta", 10000.0),
        "max_position_embeddings": count(positions_key, 32768),
        "sliding_window": sliding[0] if sliding else None,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }
    if len(sliding) not in (0, layers):
        config["model_type"] = "ministral"
        config["layer_types"] = ["full_attention" if w is None else "sliding_attention" for w in windows]
    moe = params.get("moe")
    if moe:
        if not isinstance(moe, dict):
            raise CheckpointError(f"{where}: key 'moe': expected an object, found {moe!r:.80}")
        if config["model_type"] == "ministral":
            raise UnsupportedError(f"{where}: a mixture of experts with mixed attention layers is not supported")
        config["model_type"] = "mixtral"
        config["num_local_experts"] = count("moe.num_experts", 8, moe)
        config["num_experts_per_tok"] = count("moe.num_experts_per_tok", 2, moe)
    if params.get("rope_scaling") or params.get("yarn"):
        raise UnsupportedError(f"{where}: rope scaling in params.json is not supported")
    config["architectures"] = [{"mistral": "Mistral", "ministral": "Ministral", "mixtral": "Mixtral"}[config["model_type"]] + "ForCausalLM"]
    return config


def weights_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    shards = sorted(directory.glob("consolidated.*.pth"))
    if len(shards) > 1:
        raise UnsupportedError(
            f"{directory}: {len(shards)} tensor-parallel consolidated.*.pth shards; merge them into one file first"
        )
    raise CheckpointError(f"{directory}: params.json without weights (looked for {', '.join(WEIGHT_FILES)})")


def tokenizer_file(directory: Path) -> Path | None:
    """The tokenizer that ships with an original-layout checkpoint, newest format first."""
    return next((directory / name for name in TOKENIZER_FILES if (directory / name).is_file()), None)


def load_mistral_original(path: Path) -> tuple[dict[str, Any], Mapping[str, torch.Tensor]] | None:
    """FORMAT_LOADERS entry: a directory with params.json (and no HF config.json) → (config, tensors)."""
    directory = Path(path)
    if not (directory / PARAMS).is_file() or (directory / "config.json").is_file():
        return None
    where = str(directory / PARAMS)
    try:
        params = json.loads((directory / PARAMS).read_text(encoding="utf-8"))
    # ValueError: bad JSON, bad UTF-8, integers of thousands of digits; RecursionError: deep nesting
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(params, dict):
        raise CheckpointError(f"{where}: expected a JSON object, found {type(params).__name__}")
    file = weights_file(directory)
    weights = SafetensorsFile(file) if file.suffix == ".safetensors" else _load_bin(file)
    sources = {hf_name(name, str(file)): name for name in weights}
    stored_layers = len({match.group(1) for match in map(_LAYER_PATTERN.fullmatch, weights) if match})
    config = hf_config(params, where, stored_layers)
    return config, InterleavedRotaryTensors(sources, lambda name, dtype: as_dtype(weights[name], dtype), config, str(file))
