"""Command-line options shared by several verbs."""

import argparse
import sys

from core.models.devices import DTYPES
from core.models.loading import DEFAULT_MODEL, LoadedModel, load_base_model
from core.models.quantize import QUANTIZATIONS


def add_model_options(parser: argparse.ArgumentParser, adapter: bool = False) -> None:
    """--model/--base, --dtype, --quantization, --device (the arguments of `load_base_model`), and --adapter."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", "--base", dest="model",
        help="'default' (embedded SmolLM2-135M-Instruct), a Hugging Face folder, a .gguf file, or a hub id "
             "(default: the adapter's base model, else 'default')",
    )
    group.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    group.add_argument("--quantization", "--quant", dest="quantization", default="none", choices=QUANTIZATIONS)
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    if adapter:
        group.add_argument("--adapter", help="a run id (see `launch.py runs`), a registered adapter's name or id "
                                             "(`launch.py adapters list`) or a PEFT adapter folder")


def load_model(args: argparse.Namespace) -> tuple[LoadedModel, str | None]:
    """Load the base model and, when --adapter is given, attach it as the active adapter 'adapter'."""
    folder, trained_on = None, None
    if getattr(args, "adapter", None):
        from core.jobs.adapters import adapter_source
        from core.store.database import Store

        with Store() as store:
            named = adapter_source(store, args.adapter)
            folder, trained_on = named.folder, named.trained_on
    source = args.model or trained_on or DEFAULT_MODEL
    loaded = load_base_model(source=source, dtype=args.dtype, quantization=args.quantization, device=args.device)
    if folder is None:
        return loaded, None
    from core.lora.peft_format import load_adapter

    report = load_adapter(loaded.model, folder, name="adapter")
    if report.warning:
        print(f"WARNING: {report.warning}", file=sys.stderr)
    return loaded, "adapter"
