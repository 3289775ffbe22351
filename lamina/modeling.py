"""`PreTrainedModel`: building, loading and saving every lamina model.

Loading builds the model on the meta device, maps the checkpoint's names onto lamina's through the
family's name map, checks every key and shape, and assigns the (mmap'd) tensors in place, so the
peak memory of a load stays near the model's own size. Saving runs the same map backwards.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .checkpoints.gguf import load_gguf
from .checkpoints.io import (
    CheckpointReader, as_dtype, atomic_directory, open_checkpoint, release_mapped_pages, write_weights,
)
from .checkpoints.mistral import load_mistral_original
from .checkpoints.namemap import Rule, with_prefix
from .config import PretrainedConfig, drop_inert_arguments, is_integer, resolve_dtype
from .distributed import place
from .errors import CheckpointError, ConfigError, InputError, LaminaError, UnsupportedError
from .generation.config import GenerationConfig
from .hub import locate_checkpoint, take_hub_arguments
from .quantization import quantize
from .quantization.apply import quantize_on_load
from .tf.h5 import load_tf_checkpoint
from .progress import ProgressBar
from .layers.fused import FusedPart
from .training import TrainingMixin

logger = logging.getLogger("lamina")

ATTENTION_BACKENDS = ("eager", "sdpa", "flash_attention_2")


class LoadHook(Protocol):
    """Sees each tensor as a load maps it onto the model's parameter `name` and returns what to
    assign; `finish()` runs after the assignment."""

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor: ...

    def finish(self) -> None: ...


class Placement(Protocol):
    """Where a load puts the model beyond one device (`lamina.distributed.place`): `merge` builds
    each parameter as this rank or device holds it from the checkpoint tensors it is made of, and
    `finish(model)` moves the loaded model into place."""

    def merge(self, name: str, merge: Callable[[list[torch.Tensor]], torch.Tensor],
              sources: list[torch.Tensor]) -> torch.Tensor: ...

    def finish(self, model: nn.Module) -> None: ...


@dataclass
class LoadingInfo:
    """What a load did beyond a one-to-one copy: heads initialised, foreign keys dropped."""

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)


# Checkpoint formats other than an HF directory register a loader here: given a path, it returns
# (HF config dict, tensors under HF names) or None when the path is not of its format.
def _load_tf_h5(path: Path) -> tuple[dict, Mapping[str, torch.Tensor]] | None:
    """transformers' TensorFlow weights (`tf_model.h5`) for the PyTorch classes; h5py is needed
    only when such a file is there."""
    if not (path / "tf_model.h5").is_file():
        return None
    return load_tf_checkpoint(path)


def _load_tensor_parallel_layout(path: Path) -> tuple[dict, Mapping[str, torch.Tensor]] | None:
    """lamina's own tensor-parallel layout (`lamina convert --tp N`): this rank's file."""
    from .distributed.layout import load_tensor_parallel_layout

    return load_tensor_parallel_layout(path)


FORMAT_LOADERS: list[Any] = [load_gguf, load_mistral_original, _load_tf_h5, _load_tensor_parallel_layout]


def check_attn_implementation(name: str | None) -> str:
    name = name or "sdpa"
    if name not in ATTENTION_BACKENDS:
        raise UnsupportedError(f"attn_implementation: expected one of {ATTENTION_BACKENDS}, found {name!r}")
    if name == "flash_attention_2":
        if not torch.cuda.is_available():
            raise UnsupportedError("attn_implementation='flash_attention_2' needs a CUDA device; none is available")
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise UnsupportedError(
                "attn_implementation='flash_attention_2' needs the flash-attn package (pip install flash-attn)"
            ) from None
    return name


class skip_init_on_meta(TorchFunctionMode):
    """Within it, initialisers leave meta tensors as they are instead of "filling" them: that does
    nothing but cost time, and torch's meta `normal_` imports torch._dynamo (tens of MB
    resident) the first time it runs. Models built on the meta device for loading use it."""

    _INITIALISERS = frozenset(
        [getattr(nn.init, name) for name in dir(nn.init) if name.endswith("_") and not name.startswith("_")]
        + [torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_]
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._INITIALISERS:
            tensor = args[0] if args else kwargs.get("tensor")  # nn.init passes it by keyword
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


class PreTrainedModel(TrainingMixin, nn.Module):
    """Base of every lamina model.

    Subclasses set `config_class`; task models hold their base model under `base_model_prefix`
    (the attribute name transformers uses, so the checkpoint names line up) and set
    `base_model_class`.
    """

    config_class: ClassVar[type[PretrainedConfig]] = PretrainedConfig
    base_model_prefix: ClassVar[str] = "model"
    base_model_class: ClassVar[type[PreTrainedModel] | None] = None
    # checkpoint keys that are dropped silently (buffers old checkpoints stored)
    ignore_on_load: ClassVar[tuple[str, ...]] = ()
    # {parameter: parameter it shares storage with} when the config ties them
    tied_weights: ClassVar[dict[str, str]] = {}
    supports_gradient_checkpointing: ClassVar[bool] = True

    def __init_subclass__(cls, base: type[PreTrainedModel] | None = None, prefix: str | None = None,
                          **kwargs: Any) -> None:
        """`class MistralForCausalLM(DecoderForCausalLM, base=MistralModel)`: a task class over
        `base`, with its config class, holding it under `prefix` (default: the base's own)."""
        if base is not None:
            cls.base_model_class = base
            cls.config_class = base.config_class
            cls.base_model_prefix = prefix or base.base_model_prefix
        super().__init_subclass__(**kwargs)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.config = config
        config._attn_implementation = check_attn_implementation(config._attn_implementation)
        self.gradient_checkpointing = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # transformers 5.25 renamed the `past_key_values` argument `cache` (and kept the old name):
        # both reach `forward` as `past_key_values`, rather than `cache` being swallowed unread
        if "cache" in kwargs:
            if "past_key_values" in kwargs:
                raise InputError("pass the cache once: as `cache` or as `past_key_values`, not both")
            kwargs["past_key_values"] = kwargs.pop("cache")
        return super().__call__(*args, **kwargs)

    # -- weights ------------------------------------------------------------------------------

    @classmethod
    def name_map(cls, config: PretrainedConfig) -> list[Rule]:
        """Rules mapping checkpoint names onto this model's names (besides plain renames)."""
        if cls.base_model_class is None:
            return []
        prefix = cls.base_model_prefix + "."
        return with_prefix(cls.base_model_class.name_map(config), prefix, prefix)

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, FusedPart):
            return  # views of a fused layer, initialised with it
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            # bare parameters (stacked experts, …): matrices drawn like Linear weights
            for param in module.parameters(recurse=False):
                if param.dim() >= 2:
                    nn.init.normal_(param, mean=0.0, std=std)

    def post_init(self) -> None:
        """Initialise weights (unless built on the meta device) and tie what the config ties."""
        if not any(p.is_meta for p in self.parameters()):
            with torch.no_grad():
                self.apply(self._init_weights)
        self.tie_weights()

    def _active_ties(self) -> dict[str, str]:
        return self.tied_weights if getattr(self.config, "tie_word_embeddings", False) else {}

    def tie_weights(self) -> None:
        for target, source in self._active_ties().items():
            owner_name, _, attr = target.rpartition(".")
            owner = self.get_submodule(owner_name)
            setattr(owner, attr, self.get_parameter(source))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.parameters() if p.is_floating_point()).dtype

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters counted once each (tied ones too); `exclude_embeddings` leaves out the embedding
        tables, as transformers does (`Trainer` counts floating point operations with it)."""
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        params = {id(p): p for p in self.parameters() if (p.requires_grad or not only_trainable) and id(p) not in embeddings}
        return sum(p.numel() for p in params.values())

    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.embed_tokens

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = False

    @staticmethod
    def check_token_ids(input_ids: torch.Tensor | None, vocab_size: int) -> None:
        """Ids outside the vocabulary get a clear error instead of an index error deep inside."""
        if input_ids is None or input_ids.numel() == 0 or input_ids.is_meta:
            return
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            bad = high if high >= vocab_size else low
            raise InputError(f"input_ids: token id {bad} is outside the vocabulary [0, {vocab_size})")

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
        dtype = resolve_dtype(kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None))
        if "attn_implementation" in kwargs:
            config._attn_implementation = kwargs.pop("attn_implementation")
        model = cls(config)
        return model.to(dtype) if dtype is not None else model

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        config: PretrainedConfig | None = None,
        dtype: Any = "auto",
        torch_dtype: Any = None,
        attn_implementation: str | None = None,
        ignore_mismatched_sizes: bool = False,
        output_loading_info: bool = False,
        quantization_config: Any = None,
        gguf_file: str | None = None,
        device_map: str | dict | torch.device | None = None,
        max_memory: dict | None = None,
        offload_folder: str | os.PathLike | None = None,
        tp_plan: str | None = None,
        tp_size: int | None = None,
        ep_size: int | None = None,
        device_mesh: Any = None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """Load a model from a local directory, a Hub id (with huggingface_hub), or another format a
        registered loader recognises (GGUF, Mistral's original layout, …).

        Loading arguments are arguments, never stored on the config nor written by `save_pretrained`:
        the Hub's (`token`, `revision`, `cache_dir`, `local_files_only`, `force_download`,
        `proxies`, `subfolder`) go to the download, the placement ones (`device_map`, `tp_plan`,
        `tp_size`, `ep_size`, `device_mesh`, `max_memory`, `offload_folder`) to
        `lamina.distributed.place`: `tp_plan="auto"` splits the model over the ranks of a `torchrun`
        launch, a `device_map` places its layers across devices and the disk. Any other
        keyword argument replaces a value of the config and must name one of its fields."""
        drop_inert_arguments(kwargs)
        hub = take_hub_arguments(kwargs)
        path = locate_checkpoint(pretrained_model_name_or_path, gguf_file, **hub)
        if config is not None and kwargs:
            config = type(config).from_dict(config.to_dict(), **kwargs)
        tensors: Mapping[str, torch.Tensor] | None = None
        directory: Path | None = None
        for loader in FORMAT_LOADERS:
            found = loader(path)
            if found is not None:
                config_dict, tensors = found
                if config is None:
                    config = cls.config_class.from_dict(config_dict, **kwargs)
                break
        if tensors is None:
            if not path.is_dir():
                raise CheckpointError(f"{path}: expected a model directory or a checkpoint file lamina reads, "
                                      "found another file")
            directory = path
            if config is None:
                config = cls.config_class.from_pretrained(directory, **kwargs)
            tensors = open_checkpoint(directory)
        if torch_dtype is not None and dtype == "auto":
            dtype = torch_dtype
        target_dtype = resolve_dtype(dtype) or resolve_dtype(config.dtype) or torch.float32
        if dtype == "auto" and config.dtype is None:
            target_dtype = _checkpoint_float_dtype(tensors) or torch.float32
        config._attn_implementation = attn_implementation or config._attn_implementation

        _check_layer_count(config, tensors)
        try:
            with torch.device("meta"), skip_init_on_meta():
                model = cls(config)
        except LaminaError:
            raise
        except (RuntimeError, TypeError, ValueError, OverflowError) as err:  # sizes torch cannot hold
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"{pretrained_model_name_or_path}: the config describes a {cls.__name__} that "
                              f"cannot be built ({reason})") from None
        saved_quantization = getattr(config, "quantization_config", None)
        if saved_quantization is not None:  # a quantized checkpoint: empty quantized layers receive it
            quantize(model, saved_quantization)
        on_tensor = None
        if quantization_config is not None and saved_quantization is None:
            on_tensor = quantize_on_load(model, quantization_config)
        placement = place(
            model, tensors, dtype=target_dtype, device_map=device_map, max_memory=max_memory,
            offload_folder=offload_folder, tp_plan=tp_plan, tp_size=tp_size, ep_size=ep_size, device_mesh=device_mesh,
            quantizing=quantization_config)
        info = model.load_checkpoint(tensors, target_dtype, ignore_mismatched_sizes, on_tensor, placement)
        if placement is None:
            model.to(_resolve_device(device_map))
        else:
            placement.finish(model)
        if quantization_config is not None:
            # what mapping did not quantize (a tied output layer); the weights were just mapped and
            # nothing has written them: their pages can go
            quantize(model, quantization_config, release_sources=True)
        model.eval()
        model.loading_info = info
        if directory is not None and hasattr(model, "generate") and (directory / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(directory)
        return (model, info) if output_loading_info else model

    def load_checkpoint(
        self,
        tensors: Mapping[str, torch.Tensor],
        dtype: torch.dtype = torch.float32,
        ignore_mismatched_sizes: bool = False,
        on_tensor: LoadHook | None = None,
        placement: Placement | None = None,
    ) -> LoadingInfo:
        """Map, check and assign a checkpoint's tensors (HF names) onto this model in place.

        `on_tensor` sees each tensor as it is mapped and gives what is assigned instead (quantizing
        while loading: `quantization.QuantizeOnLoad`); its `finish()` runs once all are assigned.
        `placement` (from `lamina.distributed.place`) builds each tensor as this rank or device holds
        it: a tensor-parallel slice, or the tensor on its mapped device."""
        info = LoadingInfo()
        expected = {k: v for k, v in self.state_dict(keep_vars=True).items()}
        state = self._map_checkpoint(tensors, info, expected, dtype, on_tensor, placement)
        for tied in self._active_ties():
            expected.pop(tied, None)
            state.pop(tied, None)
        base_prefix = self.base_model_prefix + "." if self.base_model_class is not None else ""
        where = _describe(tensors)

        for key in list(state):
            if key not in expected:
                if base_prefix and not key.startswith(base_prefix):
                    info.unexpected_keys.append(key)  # another head's weights: dropped, reported
                    del state[key]
                    continue
                raise CheckpointError(f"{where}: unexpected key {key!r} (not a parameter of {type(self).__name__})")
            want, found = tuple(expected[key].shape), tuple(state[key].shape)
            if want != found:
                if not ignore_mismatched_sizes:
                    raise CheckpointError(f"{where}: key {key!r} has shape {found}, expected {want}")
                info.mismatched_keys.append((key, found, want))
                del state[key]
        for key in expected:
            if key in state or _is_buffer_key(self, key):
                continue
            if base_prefix and not key.startswith(base_prefix) or any(key == m[0] for m in info.mismatched_keys):
                info.missing_keys.append(key)
                continue
            raise CheckpointError(f"{where}: missing key {key!r} needed by {type(self).__name__}")

        self.load_state_dict(state, strict=False, assign=True)
        if on_tensor is not None:
            on_tensor.finish()
        self._materialize_rest(dtype)
        if info.missing_keys:
            logger.warning("%s: newly initialised (not in the checkpoint): %s", type(self).__name__, info.missing_keys)
        if info.unexpected_keys:
            logger.warning("%s: checkpoint keys not used: %s", type(self).__name__, info.unexpected_keys)
        return info

    def _map_checkpoint(
        self, tensors: Mapping[str, torch.Tensor], info: LoadingInfo, expected: dict[str, torch.Tensor],
        dtype: torch.dtype, on_tensor: LoadHook | None = None, placement: Placement | None = None,
    ) -> dict[str, torch.Tensor]:
        """Checkpoint names → this model's names: prefix reconciliation, then the name map.

        Each tensor is converted to `dtype` (floating parameters only) as soon as it is built, and
        the file pages behind a tensor that only survives as a copy are released, so peak memory
        stays near the loaded model's bytes rather than the file's plus the copies'."""
        prefix = self.base_model_prefix + "."
        keys = [k for k in tensors if not any(re.search(p, k) for p in self.ignore_on_load)]
        has_prefix = any(k.startswith(prefix) for k in keys)
        renamed: dict[str, str] = {}
        for key in keys:
            if self.base_model_class is not None and not has_prefix:
                renamed[prefix + key] = key  # a base-model checkpoint loaded into a task model
            elif self.base_model_class is None and has_prefix:
                if key.startswith(prefix):
                    renamed[key[len(prefix) :]] = key
                else:
                    info.unexpected_keys.append(key)  # a task head loaded into the base model
            else:
                renamed[key] = key
        state: dict[str, torch.Tensor] = {}
        mapping = [(rule.target, rule.sources, rule.merge) for rule in type(self).name_map(self.config)]
        mapping += [(name, (name,), lambda sources: sources[0]) for name in list(renamed)]
        with ProgressBar(len(renamed), f"Loading {type(self).__name__}", "tensors") as loading:
            for target, names, merge in mapping:
                present = [name in renamed for name in names]
                if not any(present):
                    continue
                if not all(present):
                    missing = [name for name, p in zip(names, present) if not p]
                    raise CheckpointError(
                        f"{_describe(tensors)}: missing key {missing[0]!r} (needed to build {target!r})")
                want = expected.get(target)
                want = dtype if want is not None and want.is_floating_point() else None
                sources = [_read(tensors, renamed.pop(name), want) for name in names]
                # with a placement, this rank's part only, read from the sources
                merged = merge(sources) if placement is None else placement.merge(target, merge, sources)
                for source in sources:  # the pages of sources only a copy keeps (merged, permuted)
                    if source.data_ptr() != merged.data_ptr():
                        release_mapped_pages(source)
                state[target] = merged if on_tensor is None else on_tensor(target, merged)
                loading.advance(len(names), merged.nbytes)
        return state

    def _materialize_rest(self, dtype: torch.dtype) -> None:
        """Give real storage to whatever the checkpoint did not fill: new heads, computed buffers."""
        self.tie_weights()  # tied parameters take their source's storage, not a fresh one
        for module in self.modules():
            own_params = list(module.parameters(recurse=False))
            if any(p.is_meta for p in own_params):
                module.to_empty(device="cpu", recurse=False)
                for name, param in module.named_parameters(recurse=False):
                    if param.is_floating_point() and param.dtype != dtype:
                        setattr(module, name, nn.Parameter(param.to(dtype), requires_grad=param.requires_grad))
                with torch.no_grad():
                    self._init_weights(module)
            if hasattr(module, "reset_buffers"):
                module.reset_buffers()
        self.tie_weights()
        for name, buffer in self.named_buffers():
            if buffer.is_meta:
                raise CheckpointError(f"buffer {name!r} of {type(self).__name__} was not restored by the load")

    # -- saving -------------------------------------------------------------------------------

    def checkpoint_state_dict(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """This model's weights (or `state`, tensors under lamina's names, e.g. gradients) under the
        checkpoint's (HF) names and layouts."""
        # persistent buffers (batch-norm statistics, …) are part of a checkpoint; state_dict() has
        # already left out the computed ones
        state = dict(self.state_dict() if state is None else state)
        for tied in self._active_ties():
            state.pop(tied, None)
        out: dict[str, torch.Tensor] = {}
        for rule in type(self).name_map(self.config):
            if rule.target in state:
                out.update(zip(rule.sources, rule.split(state.pop(rule.target))))
        out.update(state)
        return out

    def save_config_files(self, directory: Path) -> None:
        """config.json (naming this class and dtype) and, for a generating model, generation_config.json."""
        self.config.architectures = [type(self).__name__]
        self.config.dtype = str(self.dtype).removeprefix("torch.")
        self.config.save_pretrained(directory)
        generation_config = getattr(self, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(directory)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        max_shard_size: int | str = "5GB",
        safe_serialization: bool = True,
        state_dict: dict[str, torch.Tensor] | None = None,
        for_transformers: bool = False,
        **_: Any,
    ) -> None:
        """Write config.json (+ generation_config.json) and HF-named weights, atomically.

        A model quantized by lamina is written in lamina's own layout, which its config.json says
        (`quantization_config.quant_method` "lamina" and a note); `for_transformers=True` asks for
        a directory that transformers loads, which such a model cannot give: an error, not a file."""
        quantized = getattr(self, "quantization_method", None)
        if for_transformers and quantized is not None:
            raise UnsupportedError(
                f"save_pretrained(for_transformers=True): this model is quantized by lamina "
                f"({quantized.method}), whose layers transformers cannot load; save the model before "
                "quantizing it, or without for_transformers to keep lamina's format")
        state = state_dict if state_dict is not None else self.checkpoint_state_dict()
        with atomic_directory(save_directory) as tmp:
            self.save_config_files(tmp)
            write_weights(state, tmp, max_shard_size, safe_serialization)
            for hook in getattr(self, "extra_save_hooks", ()):
                hook(tmp)


def _read(tensors: Mapping[str, torch.Tensor], key: str, dtype: torch.dtype | None) -> torch.Tensor:
    """A checkpoint tensor, floating ones in `dtype` (None: as stored). Readers that produce a
    dtype themselves (GGUF's dequantizer) are asked for it; mapped tensors are converted a block
    at a time, releasing their file pages as they go."""
    read = getattr(tensors, "read", None)
    return as_dtype(read(key, dtype) if read is not None else tensors[key], dtype)


def _is_buffer_key(model: nn.Module, key: str) -> bool:
    owner_name, _, attr = key.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    return attr in owner._buffers


# a numbered module in a checkpoint name: `model.layers.7.`, `h.7.`, `encoder.layer.7.`, `experts.7.`
_NUMBERED = re.compile(r"(?:^|\.)(\d{1,9})\.")


def _check_layer_count(config: PretrainedConfig, tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse a config that asks for more layers than the checkpoint holds before building them: the
    load would fail on the missing keys anyway, after building every layer (for a config.json saying
    10**9 layers, a hang). The checkpoint's largest module number bounds its layers from above."""
    layers = getattr(config, "num_hidden_layers", None)
    if not is_integer(layers):
        return
    stored = 1 + max((int(number) for key in tensors for number in _NUMBERED.findall(key)), default=-1)
    if layers > stored:
        raise CheckpointError(f"{_describe(tensors)}: the config's num_hidden_layers is {layers}, "
                              f"but the checkpoint holds the weights of {stored} layers at most")


def _describe(tensors: Mapping[str, torch.Tensor]) -> str:
    if isinstance(tensors, CheckpointReader):
        files = sorted({tensors.source(k) for k in tensors})
        return files[0] if len(files) == 1 else f"{Path(files[0]).parent} ({len(files)} shards)"
    return getattr(tensors, "description", "<checkpoint>")


def _checkpoint_float_dtype(tensors: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    for key in tensors:
        tensor = tensors[key]
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _resolve_device(device_map: str | dict | torch.device | None) -> torch.device:
    if device_map is None or device_map == "auto":
        return torch.device("cuda" if device_map == "auto" and torch.cuda.is_available() else "cpu")
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise UnsupportedError(f"device_map: lamina places a model on one device, found {sorted(map(str, devices))}")
        device_map = devices.pop()
    if isinstance(device_map, int):
        device_map = f"cuda:{device_map}"
    device = torch.device(device_map)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedError(f"device_map: {device_map!r} asks for CUDA, which is not available")
    return device

