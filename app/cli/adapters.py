"""`launch.py adapters <action>`: work with saved adapters. `inspect DIR` summarises one without loading a model;
`list` shows the adapters in the store (trained, imported or composed); `import DIR` registers an existing PEFT
folder; `compose --adapter A --adapter B --weights 1,0.5 --name NAME` writes and registers their weighted sum
(exit 4, as for an export, when its parity check against the live weighted set fails)."""

import argparse
import json
import sys

from app.cli.export import PARITY_FAILED_EXIT, parse_weights
from core.export.composition import compose_adapter
from core.export.exporter import STATUS_PARITY_FAILED
from core.jobs.adapters import adapter_source, import_adapter
from core.lora.peft_format import inspect_adapter
from core.lora.targets import targets_text
from core.store.database import Store


def register(verbs) -> None:
    parser = verbs.add_parser("adapters", help="list, import and inspect LoRA adapters (PEFT format)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = actions.add_parser("inspect", help="show an adapter's base model, rank, alpha, targets and size")
    inspect.add_argument("folder", metavar="ADAPTER", help="an adapter folder (adapter_config.json and "
                         "adapter_model.safetensors), a run id, or a registered adapter's name or id")
    inspect.set_defaults(handler=run_inspect)
    listing = actions.add_parser("list", help="list the adapters LoRA Forge knows, newest first")
    listing.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    listing.set_defaults(handler=run_list)
    importing = actions.add_parser("import", help="register an existing PEFT adapter folder")
    importing.add_argument("folder", metavar="DIR", help="a PEFT adapter folder (adapter_config.json + safetensors)")
    importing.set_defaults(handler=run_import)
    compose = actions.add_parser("compose", help="register a new adapter: the weighted sum of several (exact)")
    compose.add_argument("--adapter", action="append", required=True,
                         help="a run id, registered adapter name or id, or adapter folder; "
                              "repeat for each adapter in the sum")
    compose.add_argument("--weights", type=parse_weights, help="comma-separated weight per adapter (default 1 each)")
    compose.add_argument("--name", required=True,
                         help="the new adapter's name (its folder under LORAFORGE_HOME/adapters)")
    compose.add_argument("--model", "--base", dest="model", help="base model (default: the adapters' own)")
    compose.add_argument("--rank", type=int, help="compress the sum to this rank by SVD, the error reported "
                                                   "(default: the exact sum, whose rank is the parts' total)")
    compose.set_defaults(handler=run_compose)
    extract = actions.add_parser("extract", help="register a new adapter extracted from a fully fine-tuned model "
                                                 "(truncated SVD of its change to the base)")
    extract.add_argument("--base", required=True, help="the base model folder ('default' for the embedded one)")
    extract.add_argument("--tuned", required=True, help="the fine-tuned model's folder (same architecture)")
    extract.add_argument("--rank", default="16", help="the adapter's rank, or 'auto' with --energy (default 16)")
    extract.add_argument("--energy", type=float, help="with --rank auto: the share of each layer's change to keep "
                                                      "(0.9 = 90%%), which picks a rank per layer")
    extract.add_argument("--targets", default="all-linear", help="qv, attention, mlp, all-linear, or module names "
                                                                 "separated by commas (default all-linear)")
    extract.add_argument("--name", required=True, help="the new adapter's name")
    extract.set_defaults(handler=run_extract)


def run_inspect(args: argparse.Namespace) -> int:
    with Store() as store:  # names and run ids as `adapters list` and `runs` show them, as other verbs take them
        folder = adapter_source(store, args.folder).folder
    info = inspect_adapter(folder)
    targets = targets_text(info.targets)
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


def run_list(args: argparse.Namespace) -> int:
    with Store() as store:
        adapters = store.adapters()
    if args.json:
        print(json.dumps(adapters, indent=1))
        return 0
    print(f"{'ID':>4}  {'SOURCE':<8}  {'RANK':>4}  {'ALPHA':>6}  {'SIZE':>9}  {'NAME':<24}  PATH")
    for adapter in adapters:
        alpha = adapter["alpha"]
        alpha = f"{alpha:g}" if isinstance(alpha, int | float) else str(alpha or "")
        print(f"{adapter['id']:>4}  {adapter['source']:<8}  {adapter['rank'] or '':>4}  {alpha:>6}  "
              f"{_human_bytes(adapter['size_bytes'] or 0):>9}  {adapter['name']:<24}  {adapter['path']}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    with Store() as store:
        adapter = import_adapter(store, args.folder)
    print(f"Adapter {adapter['id']} ({adapter['name']}) registered from {adapter['path']}.")
    print(json.dumps(adapter))
    return 0


def run_compose(args: argparse.Namespace) -> int:
    result, adapter = compose_adapter(args.adapter, args.weights, args.name, base=args.model,
                                      progress=lambda line: print(line, file=sys.stderr, flush=True), rank=args.rank)
    check = result.parity["checks"][0]
    print(f"Adapter {adapter['id']} ({adapter['name']}, rank {adapter['rank']}) composed in {adapter['path']}: "
          f"largest logit difference from the live weighted set {check['max_logit_diff']:.2e}.")
    for warning in result.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    print(json.dumps(adapter))
    return PARITY_FAILED_EXIT if result.status == STATUS_PARITY_FAILED else 0


def run_extract(args: argparse.Namespace) -> int:
    from core.export.extraction import extract, rank_choice

    rank, energy = rank_choice(args.rank, args.energy)
    targets = [name.strip() for name in args.targets.split(",")] if "," in args.targets else args.targets
    done = extract(args.base, args.tuned, args.name, rank=rank, energy=energy, targets=targets,
                   progress=lambda line: print(line, file=sys.stderr, flush=True))
    report, parity = done.report, done.parity
    ranks = sorted({layer.rank for layer in report.layers.values()})
    ranks_text = f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0])
    kept = min(layer.energy_kept for layer in report.layers.values())
    print(f"Adapter {done.adapter['id']} ({done.adapter['name']}) extracted into {done.adapter['path']}: "
          f"{len(report.layers)} layers at rank {ranks_text}, "
          f"largest relative error {report.max_relative_error:.3g}, at least {kept:.1%} of each layer's change kept.")
    if report.unchanged_layers:
        print(f"{len(report.unchanged_layers)} targeted layers did not change and are left out.")
    if report.other_changes:
        print(f"{report.other_change_share:.2%} of the change lies outside the targeted layers ("
              f"{', '.join(sorted(report.other_changes)[:5])}{' ...' if len(report.other_changes) > 5 else ''}); "
              "LoRA cannot carry it.")
    print(f"Against the fine-tuned model: largest logit difference {parity.max_logit_diff:.3g} "
          f"(largest |logit| {parity.logit_scale:.3g}), greedy answers agree on {parity.greedy_matches} of "
          f"{parity.prompts} prompts.")
    print(json.dumps({"adapter": done.adapter, "extraction": report.to_json(),
                      "parity": {key: getattr(parity, key) for key in ("max_logit_diff", "logit_scale",
                                                                       "greedy_matches", "prompts")}}))
    return 0


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
