"""The engine's own background processes, started as `python -m core.jobs.worker ROLE`:

    supervisor   the queue's loop (core.jobs.supervisor.serve): starts queued runs, one job process each
    train        one training job: reads the run id the supervisor claimed for it from stdin, sends its output
                 to the run's job.log, trains, and ends with the same JSON line as a foreground run
    rank         one rank of a run that several processes train (core.jobs.ranks), started by torchrun's agent

No front-end is involved: the supervisor and its jobs keep running when the page or the terminal that queued
them goes away.
"""

import os
import sys
from pathlib import Path

ROLES = ("supervisor", "train", "rank")


def main(argv: list[str]) -> int:
    if argv[:1] == ["rank"]:
        from core.jobs.ranks import rank_main
        from core.models.quiet import quiet_libraries

        quiet_libraries()
        return rank_main(argv[1:])
    if len(argv) != 1 or argv[0] not in ROLES:
        print(f"usage: python -m core.jobs.worker {{{','.join(ROLES)}}}", file=sys.stderr)
        return 2
    from core.store.database import JOB_PATIENCE, Store

    Store.default_patience = JOB_PATIENCE  # this process's work must outlast another's long transaction
    if argv[0] == "supervisor":
        from core.jobs.supervisor import serve  # no torch: the supervisor starts in a second and stays small

        return serve()
    return train_claimed_run()


def train_claimed_run() -> int:
    """Train the run whose id arrives on stdin; 0 when it completed, 3 when it stopped early (resumable)."""
    from core.jobs.background import run_claimed_job
    from core.jobs.runs import report_outcome
    from core.models.quiet import quiet_libraries
    from core.store.database import Store
    from core.training.events import log_events
    from core.training.run_folder import RunFolder

    quiet_libraries()
    run_id = sys.stdin.readline().strip()
    if not run_id:
        return 0  # the supervisor claimed nothing for this process
    with Store() as store:
        log = RunFolder(store.get_run(run_id)["run_dir"]).job_log
        if log.parent.is_dir():
            _send_output_to(log)
        result = run_claimed_job(store, run_id, events=log_events)
        return 0 if result is None else report_outcome(store, run_id, result)


def _send_output_to(path: Path) -> None:
    """Point this process's stdout and stderr (and those of anything it starts) at `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
