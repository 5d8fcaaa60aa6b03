"""`launch.py adapters <action>`: work with saved adapters. `inspect DIR` summarises one without loading a model."""

import argparse

from core.peft_format import inspect_adapter


def register(verbs) -> None:
    parser = verbs.add_parser("adapters", help="inspect saved LoRA adapters (PEFT format)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = actions.add_parser("inspect", help="show an adapter's base model, rank, alpha, targets and size")
    inspect.add_argument("folder", metavar="DIR", help="a folder with adapter_config.json and adapter_model.safetensors")
    inspect.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    info = inspect_adapter(args.folder)
    targets = info.targets if isinstance(info.targets, str) else ", ".join(info.targets)
    variants = [name for name, on in (("DoRA", info.use_dora), ("rsLoRA", info.use_rslora)) if on]
    rows = [
        ("adapter", info.folder),
        ("base model", info.base_model or "(not recorded)"),
        ("rank", ", ".join(map(str, info.ranks))),
        ("alpha", f"{info.alpha:g}"),
        ("targets", f"{targets} ({info.modules} modules)"),
        ("variant", ", ".join(variants) or "LoRA"),
        ("parameters", f"{info.parameters:,}"),
        ("size", _human_bytes(info.size_bytes)),
    ]
    for label, value in rows:
        print(f"{label:<11} {value}")
    return 0


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
