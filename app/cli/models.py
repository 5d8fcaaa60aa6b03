"""`launch.py models --dir PATH [--json]`: the base models under a folder, as the Train tab's picker lists them.

The table gives each model's name, family, size and whether it trains, then what will work with it (QLoRA,
packing, GGUF export) and the path to pass as --base; --json prints the same rows, one JSON object a line."""

import argparse
import json
import sys

from core.export.targets import COLUMNS, base_model_rows

WIDTHS = {"name": 28, "family": 12, "size": 34, "train": 0}


def register(verbs) -> None:
    parser = verbs.add_parser("models", help="list the model folders and .gguf files under a folder, and what "
                                             "each will do (train, QLoRA, packing, GGUF export)")
    parser.add_argument("--dir", required=True, help="the folder that holds your model folders and .gguf files")
    parser.add_argument("--json", action="store_true", help="print one JSON object per model instead of a table")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    rows, notes = base_model_rows(args.dir)
    if args.json:
        for row in rows:
            print(json.dumps(row.as_dict()))
    elif rows:
        print("  ".join(f"{COLUMNS[key].upper():<{width}}" for key, width in WIDTHS.items()).rstrip())
        for row in rows:
            print("  ".join(f"{getattr(row, key):<{width}}" for key, width in WIDTHS.items()).rstrip())
            if row.trainable:
                print(f"    QLoRA: {row.qlora} · packing: {row.packing} · GGUF export: {row.gguf}")
                print(f"    --base {row.path}")
    else:
        print(f"No model folders (config.json with weights) or .gguf files in {args.dir}.")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
