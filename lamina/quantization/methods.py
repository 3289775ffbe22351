"""The quantization methods lamina implements (no torch import: the command line lists them)."""

METHODS = ("int8", "int4", "nf4")
