"""Keras building blocks whose weights carry their checkpoint names, and the task losses.

Every weight is registered with two names: its PyTorch (Hugging Face checkpoint) name, which is
also lamina's PyTorch parameter name, and its name in transformers' TensorFlow files
(`tf_model.h5`), with whether the two layouts are transposes of each other (a Keras kernel is
`(in, out)`, a PyTorch Linear weight `(out, in)`). Blocks keep PyTorch layouts, so weights move
between the two frameworks without copies of the maths, and `checkpoint_entries` lists them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .runtime import keras, tf

ENTRIES = "_checkpoint_entries"


@dataclass(frozen=True)
class Entry:
    """One weight: PyTorch name, transformers-TF name, the variable, and whether layouts transpose."""

    torch_name: str
    tf_name: str
    variable: Any
    transpose: bool = False


def _join(prefix: str, name: str, sep: str) -> str:
    return f"{prefix}{sep}{name}" if prefix and name else prefix or name


class Named:
    """Mixin for Keras layers and models: register weights and sub-blocks under checkpoint names.

    The registry lives outside Keras' attribute tracking (it holds names, not new state); the
    variables and sub-layers themselves are tracked by Keras as usual.
    """

    def _entries(self) -> list[tuple[str, str, Any, bool]]:
        if ENTRIES not in self.__dict__:
            self.__dict__[ENTRIES] = []
        return self.__dict__[ENTRIES]

    def param(self, torch_name: str, shape: tuple[int, ...], initializer: Any, tf_name: str | None = None,
              transpose: bool = False) -> Any:
        """A new float32 variable of PyTorch layout `shape`."""
        variable = self.add_weight(name=torch_name.replace(".", "_"), shape=shape, initializer=initializer,
                                   dtype="float32")
        self._entries().append((torch_name, tf_name or torch_name, variable, transpose))
        return variable

    def share(self, torch_name: str, variable: Any, tf_name: str) -> Any:
        """Register an existing variable under another name (tied weights)."""
        self._entries().append((torch_name, tf_name, variable, False))
        return variable

    def child(self, torch_name: str, block: Any, tf_name: str | None = None) -> Any:
        """Register a sub-block; an empty name adds no level on that side."""
        self._entries().append((torch_name, tf_name if tf_name is not None else torch_name, block, None))
        return block


def checkpoint_entries(block: Named, torch_prefix: str = "", tf_prefix: str = "") -> Iterator[Entry]:
    """Every weight under `block`, in registration order, with full names on both sides."""
    for torch_name, tf_name, item, transpose in block._entries():
        torch_path, tf_path = _join(torch_prefix, torch_name, "."), _join(tf_prefix, tf_name, "/")
        if transpose is None:
            yield from checkpoint_entries(item, torch_path, tf_path)
        else:
            yield Entry(torch_path, tf_path, item, transpose)


class Block(Named, keras.layers.Layer):
    """A Keras layer built at construction (shapes come from the config, not the first input)."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.built = True


def normal(std: float) -> Any:
    return keras.initializers.RandomNormal(mean=0.0, stddev=std)


class Linear(Block):
    """`x (..., in)` → `(..., out)`, weight stored `(out, in)` as in PyTorch."""

    def __init__(self, in_features: int, out_features: int, std: float, bias: bool = True) -> None:
        super().__init__()
        self.weight = self.param("weight", (out_features, in_features), normal(std), "kernel", transpose=True)
        self.bias = self.param("bias", (out_features,), "zeros") if bias else None

    def call(self, x: tf.Tensor) -> tf.Tensor:
        # a 2-D matmul with the weight transposed in place: TFLite turns it into FULLY_CONNECTED
        out_features, in_features = self.weight.shape
        out = tf.matmul(tf.reshape(x, [-1, in_features]), self.weight, transpose_b=True)
        if self.bias is not None:
            out = out + self.bias
        return tf.reshape(out, leading_shape(x) + [out_features])


def leading_shape(x: tf.Tensor) -> list:
    """All but the last dimension: Python ints when known (cheap in eager mode), else tensors."""
    dims = x.shape[:-1].as_list()
    if None not in dims:
        return dims
    dynamic = tf.shape(x)
    return [dynamic[i] if d is None else d for i, d in enumerate(dims)]


class Embedding(Block):
    """Lookup table `(num, dim)`; `padding_idx`'s row starts at zero, as in PyTorch."""

    def __init__(self, num: int, dim: int, std: float, tf_name: str = "embeddings", padding_idx: int | None = None) -> None:
        super().__init__()
        self.weight = self.param("weight", (num, dim), normal(std), tf_name)
        if padding_idx is not None:
            self.weight.assign(tf.tensor_scatter_nd_update(self.weight, [[padding_idx]], tf.zeros([1, dim])))

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.weight, ids)


class LayerNorm(Block):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = self.param("weight", (size,), "ones", "gamma")
        self.bias = self.param("bias", (size,), "zeros", "beta")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + self.eps) * self.weight + self.bias


class NoNorm(Block):
    """MobileBERT's elementwise `x * weight + bias`."""

    def __init__(self, size: int, eps: float | None = None) -> None:
        super().__init__()
        self.weight = self.param("weight", (size,), "ones")
        self.bias = self.param("bias", (size,), "zeros")

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return x * self.weight + self.bias


def make_norm(kind: str, size: int, eps: float) -> Block:
    if kind == "no_norm":
        return NoNorm(size)
    if kind == "layer_norm":
        return LayerNorm(size, eps)
    raise ConfigError(f"normalization_type: expected 'layer_norm' or 'no_norm', found {kind!r}")


ACTIVATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "relu": tf.nn.relu,
    "gelu": lambda x: tf.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: tf.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: tf.nn.gelu(x, approximate=True),
    "silu": tf.nn.silu,
    "swish": tf.nn.silu,
    "tanh": tf.tanh,
    "sigmoid": tf.sigmoid,
    "linear": tf.identity,
}


def activation(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    if name not in ACTIVATIONS:
        raise ConfigError(f"hidden_act: the TensorFlow classes support {sorted(ACTIVATIONS)}, found {name!r}")
    return ACTIVATIONS[name]


def dropout(x: tf.Tensor, rate: float, training: bool) -> tf.Tensor:
    return tf.nn.dropout(x, rate=rate) if training and rate > 0 else x


# -- losses: the PyTorch classes' reductions (means over the labels that count), as float32 scalars --


def cross_entropy(logits: tf.Tensor, labels: tf.Tensor, ignore_index: int = -100) -> tf.Tensor:
    """Mean cross-entropy of `logits (..., classes)` over the `labels (...)` not equal to `ignore_index`."""
    classes = tf.shape(logits)[-1]
    logits = tf.reshape(tf.cast(logits, tf.float32), [-1, classes])
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    keep = tf.not_equal(labels, ignore_index)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(keep, labels, 0), logits=logits)
    weights = tf.cast(keep, tf.float32)
    return tf.reduce_sum(losses * weights) / tf.reduce_sum(weights)


def sequence_classification_loss(logits: tf.Tensor, labels: tf.Tensor, config: Any) -> tf.Tensor:
    """Regression, single-label or multi-label loss, chosen as the PyTorch classes choose it (and
    stored in an unset `config.problem_type`)."""
    labels = tf.convert_to_tensor(labels)
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype.is_integer:
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if config.num_labels == 1:
            logits, labels = tf.reshape(logits, [-1]), tf.reshape(labels, [-1])
        return tf.reduce_mean(tf.square(logits - tf.cast(labels, logits.dtype)))
    if config.problem_type == "single_label_classification":
        return cross_entropy(logits, labels)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, logits.dtype), logits=logits))


def question_answering_loss(start_logits: tf.Tensor, end_logits: tf.Tensor, start_positions: tf.Tensor,
                            end_positions: tf.Tensor) -> tf.Tensor:
    """Mean of the start and end cross-entropies; positions past the sequence are ignored."""
    ignored = tf.shape(start_logits)[1]

    def clamp(positions: tf.Tensor) -> tf.Tensor:
        return tf.clip_by_value(tf.reshape(tf.cast(positions, tf.int32), [-1]), 0, ignored)

    start = cross_entropy(start_logits, clamp(start_positions), ignore_index=ignored)
    end = cross_entropy(end_logits, clamp(end_positions), ignore_index=ignored)
    return (start + end) / 2
