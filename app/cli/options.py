"""Command-line options shared by several verbs."""

import argparse

from core.models import DEFAULT_MODEL, DTYPES
from core.quantize import QUANTIZATIONS


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --dtype, --quantization, --device: the arguments of `core.models.load_base_model`."""
    group = parser.add_argument_group("base model")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="'default' (embedded SmolLM2-135M-Instruct), a Hugging Face folder, a .gguf file, or a hub id",
    )
    group.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    group.add_argument("--quantization", default="none", choices=QUANTIZATIONS)
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def model_options(args: argparse.Namespace) -> dict:
    return dict(source=args.model, dtype=args.dtype, quantization=args.quantization, device=args.device)
