"""`lamina export MODEL --format tflite`: a MobileBERT checkpoint → a TFLite model for devices.

Importable without TensorFlow (the `lamina` command lists it everywhere); running it without
TensorFlow fails with the error naming the extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="MobileBERT directory: tf_model.h5, model.safetensors or pytorch_model.bin + config.json")
    parser.add_argument("--format", choices=("tflite",), default="tflite", help="output format (default: tflite)")
    parser.add_argument("--task", default="sequence_classification",
                        help="head to export: base, pretraining, masked_lm, next_sentence_prediction, "
                             "sequence_classification (default), multiple_choice, token_classification, question_answering")
    parser.add_argument("--sequence-length", type=int, default=128, help="fixed input length (default: 128)")
    parser.add_argument("--batch-size", type=int, default=1, help="fixed batch size (default: 1)")
    parser.add_argument("--num-choices", type=int, default=2, help="choices per example for multiple_choice (default: 2)")
    parser.add_argument("--quantize", choices=("none", "dynamic_int8"), default="none",
                        help="dynamic_int8 stores the weights as int8 (default: none, float32)")
    parser.add_argument("-o", "--output", default=None, help="output file (default: MODEL/model.tflite or model.int8.tflite)")


def run_cli(args: argparse.Namespace) -> int:
    from .export import export_pretrained

    quantize = None if args.quantize == "none" else args.quantize
    output = Path(args.output) if args.output else Path(args.model) / ("model.int8.tflite" if quantize else "model.tflite")
    flatbuffer = export_pretrained(args.model, output, task=args.task, sequence_length=args.sequence_length,
                                   batch_size=args.batch_size, num_choices=args.num_choices, quantize=quantize)
    print(f"wrote {output} ({len(flatbuffer) / 2**20:.2f} MiB, {args.task}, sequence length {args.sequence_length})")
    return 0
