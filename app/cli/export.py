"""`launch.py merge` and `launch.py export`: write a merged folder, a GGUF or a PEFT adapter, parity-checked.

    merge  --adapter A [--adapter B ... --weights 1,0.5] --out DIR [--dtype auto|fp32|bf16|fp16] [--force]
    export --adapter A --format merged|gguf|peft [--gguf-type f16|q4_k_m|...] [--dtype ...] --out PATH [--force]

Progress goes to stderr, a failed parity check is a `WARNING: ...` line on stderr, and the last line of
stdout is the result as JSON: path, format, status, parity figures, export id. The exit status is 0 when every
parity check passed and 4 when one failed (the export is kept, for a look, but a script should not ship it).
"""

import argparse
import json
import sys

from core.export.exporter import FORMATS, STATUS_PARITY_FAILED, ExportResult, export_adapters
from core.export.gguf import GGUF_TYPES
from core.export.merged import AUTO_DTYPE
from core.export.parity import greedy_verdict
from core.models.devices import DTYPES

PARITY_FAILED_EXIT = 4


def register(verbs) -> None:
    merge = verbs.add_parser("merge", help="merge one or more adapters (weighted) into the base; save a model folder")
    _add_common(merge, several=True)
    merge.add_argument("--weights", type=parse_weights, help="comma-separated weight per adapter, e.g. 1,0.5")
    merge.set_defaults(handler=run_merge)
    export = verbs.add_parser("export", help="export an adapter as a merged folder, a GGUF file or a PEFT adapter")
    _add_common(export, several=False)
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--gguf-type", default="f16", choices=list(GGUF_TYPES),
                        help="GGUF weight type (default f16; q4_0, q4_k_m, q5_k_m, q6_k need llama-cpp-python)")
    export.set_defaults(handler=run_export)


def run_merge(args: argparse.Namespace) -> int:
    return _report(export_adapters(args.adapter, "merged", args.out, weights=args.weights, base=args.model,
                                   force=args.force, progress=_progress, merged_dtype=args.dtype))


def run_export(args: argparse.Namespace) -> int:
    return _report(export_adapters([args.adapter], args.format, args.out, gguf_type=args.gguf_type,
                                   base=args.model, force=args.force, progress=_progress, merged_dtype=args.dtype))


def _add_common(parser: argparse.ArgumentParser, several: bool) -> None:
    help_text = ("a run id (see `launch.py runs`), a registered adapter's name or id (`launch.py adapters list`) "
                 "or a PEFT adapter folder")
    if several:
        parser.add_argument("--adapter", action="append", required=True, help=f"{help_text}; repeat for several")
    else:
        parser.add_argument("--adapter", required=True, help=help_text)
    parser.add_argument("--out", required=True, help="output folder (for a zipped PEFT adapter: a path ending in .zip)")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty output")
    parser.add_argument("--dtype", default=AUTO_DTYPE, choices=[AUTO_DTYPE, *DTYPES],
                        help="precision of a merged folder's weights, merged exports only (default auto: the one "
                             "the base is stored in)")
    parser.add_argument("--model", "--base", dest="model",
                        help="base model (default: the one the adapter's run used, else 'default')")


def parse_weights(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 1,0.5") from None


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _report(result: ExportResult) -> int:
    for warning in result.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    parity = result.parity["checks"][0]
    print(f"Exported {result.format} to {result.path}: max logit difference {parity['max_logit_diff']}, "
          f"greedy answers {greedy_verdict(parity)}, chat template "
          f"{'kept' if parity['template_same'] else 'CHANGED'}.")
    print(json.dumps(result.to_json()))
    return PARITY_FAILED_EXIT if result.status == STATUS_PARITY_FAILED else 0
