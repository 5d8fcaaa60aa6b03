"""`launch.py evaluate`: loss, perplexity and exact match of the base model and of an adapter, side by side; on a
preference dataset (prompt, chosen, rejected), each one's preference accuracy and mean margin instead, and the
adapter's reward accuracy and margin against the base (DPO's implicit reward).

The base model is loaded once; the adapter is switched off for the base scores and on for its own.
The last line of stdout is `{"base": {...}, "adapter": {...}}`.
"""

import argparse
import json
from dataclasses import asdict

from app.cli.options import add_model_options, load_model
from core.data.preference import is_preference_dataset
from core.lora.model import active_adapters
from core.training.evaluate import evaluate, evaluate_preferences


def register(verbs) -> None:
    parser = verbs.add_parser("evaluate", help="score the base model and an adapter on a dataset")
    parser.add_argument("--dataset", required=True, help="JSONL, JSON, CSV or Parquet with reference answers, or "
                                                         "preference pairs (prompt, chosen, rejected)")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--skip-invalid", action="store_true",
                        help="score the valid rows and count the invalid ones (skipped_rows) instead of refusing")
    add_model_options(parser, adapter=True)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    loaded, adapter = load_model(args)
    score = evaluate_preferences if is_preference_dataset(args.dataset) else evaluate
    scores = {}
    with active_adapters(loaded.model, {}):
        scores["base"] = asdict(score(loaded.model, loaded.tokenizer, args.dataset, args.max_len,
                                      skip_invalid=args.skip_invalid))
    if adapter:
        extra = {"against_base": True} if score is evaluate_preferences else {}
        scores["adapter"] = asdict(score(loaded.model, loaded.tokenizer, args.dataset, args.max_len,
                                         skip_invalid=args.skip_invalid, **extra))
    print(json.dumps(scores))
    return 0
