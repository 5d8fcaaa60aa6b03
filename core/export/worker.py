"""One background export or composition, started by core.export.jobs.start as
`python -m core.export.worker EXPORT_ID`; its output goes to LORAFORGE_HOME/logs/export-<id>.log."""

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m core.export.worker EXPORT_ID", file=sys.stderr)
        return 2
    from core.export.jobs import run_export_job
    from core.store.database import JOB_PATIENCE, Store

    Store.default_patience = JOB_PATIENCE  # an export's result must outlast another process's long transaction
    return 0 if run_export_job(int(argv[0])) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
