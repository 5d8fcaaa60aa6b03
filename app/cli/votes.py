"""`launch.py votes export`: the Chat tab's blind A/B votes as a preference dataset (prompt, chosen, rejected).

Ties and "both bad" votes prefer neither answer, so they are left out and counted; the last stdout line is JSON
(`path`, `pairs`, `ties`, `both_bad`, `without_answers`, `same_answers`). Train on the file with
`launch.py train --method dpo --dataset FILE`.
"""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from core.chat.votes import write_preference_dataset
from core.store.database import Store


def register(verbs) -> None:
    parser = verbs.add_parser("votes", help="the Chat tab's blind A/B votes")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = actions.add_parser("export", help="write the decided votes as a preference dataset (JSONL)")
    export.add_argument("--out", required=True, help="the .jsonl file to write")
    export.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    with Store() as store:
        votes = store.votes()
    path = Path(args.out).expanduser().resolve()
    counts = write_preference_dataset(votes, path)
    print(f"{counts.pairs} preference pair(s) from {len(votes)} vote(s) written to {path}; left out: {counts.ties} "
          f"tie(s), {counts.both_bad} both bad, {counts.without_answers} without answers, {counts.same_answers} "
          "with the same answer on both sides.", file=sys.stderr)
    print(json.dumps({"path": str(path), **asdict(counts)}))
    return 0
