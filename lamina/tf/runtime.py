"""The TensorFlow and Keras 3 modules, or an `UnsupportedError` naming the extra that provides them."""

from __future__ import annotations

from ..errors import UnsupportedError

INSTALL_HINT = "pip install 'lamina[tf]'"

try:
    import keras
    import tensorflow as tf
except ImportError as error:
    raise UnsupportedError(
        f"lamina's TensorFlow classes need TensorFlow and Keras 3, which are not installed ({error}); "
        f"install them with: {INSTALL_HINT}"
    ) from None

if int(keras.__version__.split(".")[0]) < 3 or keras.backend.backend() != "tensorflow":
    raise UnsupportedError(
        f"lamina's TensorFlow classes need Keras 3 on the TensorFlow backend; found Keras {keras.__version__} "
        f"on {keras.backend.backend()!r} (set KERAS_BACKEND=tensorflow, or {INSTALL_HINT})"
    )

__all__ = ["keras", "tf"]
