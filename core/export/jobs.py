"""Exports and compositions as background jobs, so the page that starts one can close or reload meanwhile.

    start(request)            -> export id: the request checked, a "running" row added, a detached process
                                 (`python -m core.export.worker ID`, in its own session) started to do the work
    run_export_job(export_id) -> inside that process: the export or composition, its stages written to the
                                 row's `progress`, then its result, or its error as status "failed"
    refresh(store)            -> exports whose process died marked failed, their half-written files removed

An export loads its own full-precision base, so running it apart keeps the web server responsive and its
memory small; the row in the store is the truth every tab reads. The job's output goes to
LORAFORGE_HOME/logs/export-<id>.log.
"""

import fcntl
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from core import paths
from core.errors import LoraForgeError
from core.export.composition import COMPOSED, check_composition, compose_adapter
from core.export.exporter import STATUS_DONE, ExportResult, check_export, export_adapters, export_label
from core.export.extraction import EXTRACTED, check_extraction, extract
from core.export.merged import AUTO_DTYPE
from core.export.output import remove_leftovers
from core.jobs.supervisor import ROOT
from core.store.database import Store
from core.store.processes import process_start_time

RUNNING = "running"
FAILED = "failed"
LOCK_FILE = "exports.lock"
_turn = None  # this process's open handle on the lock, held until it exits


@dataclass
class ExportRequest:
    """What to export: as for export_adapters, or format "composed" with the new adapter's `name`."""

    adapters: list[str]
    format: str
    out: str = ""
    weights: list[float] | None = None
    gguf_type: str = "f16"
    base: str | None = None
    force: bool = False
    name: str = ""
    merged_dtype: str = AUTO_DTYPE
    rank: int | None = None  # a composition compressed, or an extraction made, to this rank
    tuned: str = ""  # an extraction's fully fine-tuned model (format "extracted"; `base` is its base)
    energy: float | None = None  # an extraction's share of each layer's change to keep, instead of a rank


def start(request: ExportRequest) -> int:
    """Check the request (a mistake is raised here, before anything starts), record it, start its process."""
    if request.format == COMPOSED:
        out = check_composition(request.adapters, request.weights, request.name, request.rank)
    elif request.format == EXTRACTED:
        out = check_extraction(request.base or "", request.tuned, request.name, request.rank, request.energy)
    else:
        out = check_export(request.adapters, request.format, request.out, request.weights, request.gguf_type,
                           request.force, request.merged_dtype)[0]
    label = export_label(request.format, request.gguf_type)
    with Store() as store:
        export_id = store.add_export(label, out, status=RUNNING, request=asdict(request), progress="Starting")
        with open(log_path(export_id), "a") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "core.export.worker", str(export_id)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        store.update_export(export_id, pid=process.pid, pid_start_time=process_start_time(process.pid))
    return export_id


def run_export_job(export_id: int) -> ExportResult | None:
    """Do export `export_id` in this process, after the exports started before it (each loads a full-precision
    base, so several at once would share the cores and double the memory); None when it failed (the row then
    says why)."""
    with Store() as store:
        request = ExportRequest(**store.get_export(export_id)["request"])

        def say(line: str) -> None:
            print(line, flush=True)
            store.update_export(export_id, progress=line)

        _wait_for_our_turn(say)
        try:
            if request.format == EXTRACTED:
                return _extract(store, export_id, request, say)
            if request.format == COMPOSED:
                return compose_adapter(request.adapters, request.weights, request.name, base=request.base,
                                       progress=say, export_id=export_id, rank=request.rank)[0]
            return export_adapters(request.adapters, request.format, request.out, weights=request.weights,
                                   gguf_type=request.gguf_type, base=request.base, force=request.force,
                                   progress=say, export_id=export_id, merged_dtype=request.merged_dtype)
        except LoraForgeError as error:
            print(f"error: {error}", flush=True)
            store.update_export(export_id, status=FAILED, error=str(error), progress=None)
            return None
        except BaseException as error:
            store.update_export(export_id, status=FAILED, progress=None,
                                error=f"The export stopped on an unexpected error ({error!r}); "
                                      f"{log_path(export_id)} has the details.")
            raise


def _extract(store: Store, export_id: int, request: ExportRequest, say) -> ExportResult:
    """An extraction as a job: its adapter registered, its parity figures (against the tuned model) recorded."""
    done = extract(request.base or "", request.tuned, request.name, rank=request.rank, energy=request.energy,
                   progress=say)
    parity = {"passed": done.parity.passed, "checks": [asdict(done.parity)],
              "extraction": done.report.to_json()}
    store.update_export(export_id, status=STATUS_DONE, parity=parity, adapter_id=done.adapter["id"],
                        size_bytes=done.adapter["size_bytes"], progress=None)
    warnings = [f"largest relative error of a layer's update {done.report.max_relative_error:.3g}"]
    return ExportResult(EXTRACTED, done.adapter["path"], STATUS_DONE, parity, export_id, done.adapter["size_bytes"],
                        warnings)


def _wait_for_our_turn(say) -> None:
    """Hold the exports' lock for the rest of this process (the system releases it when the process ends,
    however it ends), waiting while another export holds it."""
    global _turn
    _turn = open(paths.home() / LOCK_FILE, "w")
    try:
        fcntl.flock(_turn, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say("Waiting for the export started before this one to finish")
        fcntl.flock(_turn, fcntl.LOCK_EX)


def refresh(store: Store) -> list[dict]:
    """All exports as they really are: those whose process died marked failed, leaving no partial files."""
    for export_id in store.mark_stale_exports_failed():
        remove_leftovers(Path(store.get_export(export_id)["path"]))
    return store.exports()


def log_path(export_id: int) -> Path:
    folder = paths.home() / "logs"
    folder.mkdir(exist_ok=True)
    return folder / f"export-{export_id}.log"
