"""`launch.py runs [--json]` and `launch.py cancel RUN_ID`: the run history and the queue, from the shell.

Reading the runs also repairs them: a run whose job process died shows (and is stored) as interrupted.
"""

import argparse
import json

from app.web.runs.view import progress
from core.jobs.background import cancel, refresh
from core.store.database import Store

TABLE = (("ID", "id", 22), ("STATUS", "status", 11), ("STEPS", "steps", 9), ("CREATED", "created", 19),
         ("NAME", "name", 0))


def register(verbs) -> None:
    runs = verbs.add_parser("runs", help="list runs, newest first (running, queued, finished, interrupted)")
    runs.add_argument("--json", action="store_true", help="print a JSON array of the runs instead of a table")
    runs.set_defaults(handler=run_list)

    stop = verbs.add_parser("cancel", help="cancel a queued or running run (stops its job process)")
    stop.add_argument("run_id")
    stop.set_defaults(handler=run_cancel)


def run_list(args: argparse.Namespace) -> int:
    with Store() as store:
        runs = refresh(store)
        steps = {run["id"]: "{}/{}".format(*progress(run, store)).replace("None", "?") for run in runs}
    if args.json:
        print(json.dumps(runs, indent=1))
        return 0
    rows = [{**run, "steps": steps[run["id"]], "created": run["created"][:19].replace("T", " ")} for run in runs]
    for row in [{key: title for title, key, _ in TABLE}, *rows]:
        print("  ".join(f"{str(row[key] or ''):<{width}}" for _, key, width in TABLE).rstrip())
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    with Store() as store:
        run = cancel(store, args.run_id)
    print(f"Run {run['id']} cancelled. Resume it later with `python launch.py resume {run['id']} --background`.")
    return 0

