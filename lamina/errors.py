"""The exception types lamina raises. Every message names the file, key or argument,
what was expected and what was found."""


class LaminaError(Exception):
    """Base class of every error lamina raises on purpose."""


class ConfigError(LaminaError, ValueError):
    """A configuration value is missing, malformed or inconsistent."""


class CheckpointError(LaminaError):
    """A checkpoint file is unreadable, incomplete or does not fit the model."""


class TokenizerError(LaminaError):
    """A tokenizer file is missing or corrupt, or a tokenizer call is malformed."""


class InputError(LaminaError, ValueError):
    """A model or generation input is out of range or of the wrong shape."""


class TokenIdError(InputError, TokenizerError):
    """A token id outside the tokenizer's vocabulary."""


class SecurityError(LaminaError):
    """Untrusted input tried something lamina refuses to do (pickle imports, template escapes)."""


class UnsupportedError(LaminaError):
    """A feature was asked for that cannot run here (missing package, device, or format)."""


class DistributedError(LaminaError):
    """The ranks of a parallel run could not agree: one failed, timed out, or was never started."""
