"""`launch.py preflight`: everything `train` would check and estimate, without training."""

import argparse
import json
from dataclasses import asdict

from app.cli.train import add_training_flags, config_from_args
from core.training.preflight import preflight


def register(verbs) -> None:
    parser = verbs.add_parser("preflight", help="check a dataset and settings, estimate time and memory",
                              argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="a run.yaml; flags override it")
    add_training_flags(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    result = preflight(config_from_args(args))
    data = result.data
    lines = [
        f"Dataset    {data.source}: {data.rows} rows ({data.format}), {data.invalid_rows} invalid",
        *[f"           {problem}" for problem in data.problems[:10]],
        *([f"Pairs      {data.pairs} preference pairs, {data.tokens_per_pair:.0f} tokens per pair (both answers)"]
          if data.pairs else []),
        f"Lengths    p50 {data.length_p50}, p95 {data.length_p95}, max {data.length_max} tokens; "
        f"{data.truncated_share:.1%} truncated at {data.max_length}",
        f"Trained    {data.trained_token_share:.1%} of tokens (answers only)" if data.tokens else "Trained    nothing",
        f"Shared     {data.shared_token_share:.1%} of tokens are openings that a batch's examples share, computed once",
        f"Adapter    {result.trainable_parameters:,} trainable parameters "
        f"({result.trainable_percent:.2f}% of {result.model['parameters']:,})",
        f"Estimate   {result.total_steps} steps x {result.estimated_seconds_per_step:.1f} s = "
        f"{result.estimated_minutes:.1f} min; peak memory {result.estimated_peak_memory_mb:,.0f} MB "
        f"of {result.machine_memory_mb:,.0f} MB",
        "Example    (trained tokens between ⟦ ⟧)",
        data.example_marked,
        "Ready." if data.ready else f"NOT READY: {data.message}",
    ]
    print("\n".join(lines))
    print(json.dumps(asdict(result), default=str))
    return 0 if data.ready else 2
