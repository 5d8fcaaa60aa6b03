"""Hidden verbs that the background machinery runs; people use `train --background`, `runs`, `cancel`.

`launch.py supervisor` runs the queue (core/supervisor.py). `launch.py job` is one training job: it reads
the run id that the supervisor claimed for it from stdin, writes its output to the run's job.log, trains,
and prints the same final JSON line as `train`. `launch.py export-job ID` is one background export or
composition that the page started (core/export_jobs.py); its output goes to LORAFORGE_HOME/logs.
"""

import argparse
import os
import sys
from pathlib import Path

from app.cli.train import log_events, report
from core.export_jobs import run_export_job
from core.jobs import run_claimed_job
from core.run_logs import JOB_LOG
from core.store import Store
from core.supervisor import serve


def register(verbs) -> None:
    verbs.add_parser("supervisor").set_defaults(handler=lambda args: serve())  # no help: hidden from the verb list
    verbs.add_parser("job").set_defaults(handler=run_job)
    export_job = verbs.add_parser("export-job")
    export_job.add_argument("export_id", type=int)
    export_job.set_defaults(handler=lambda args: 0 if run_export_job(args.export_id) else 1)


def run_job(args: argparse.Namespace) -> int:
    run_id = sys.stdin.readline().strip()
    if not run_id:
        return 0  # the supervisor claimed nothing for this process
    with Store() as store:
        log = Path(store.get_run(run_id)["run_dir"]) / JOB_LOG
        if log.parent.is_dir():
            _send_output_to(log)
        result = run_claimed_job(store, run_id, events=log_events)
        return 0 if result is None else report(store, run_id, result)


def _send_output_to(path: Path) -> None:
    """Point this process's stdout and stderr (and those of anything it starts) at `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
