"""The page footer: where the model runs, how much memory this process uses, and the job queue (training runs, and
exports while any run)."""

import os
import resource
import sys
from pathlib import Path

import torch

from core import jobs
from core.export import jobs as export_jobs
from core.export.jobs import RUNNING
from core.models.loading import LoadedModel
from core.store.database import Store


def footer_text(loaded: LoadedModel, store: Store) -> str:
    """One line, re-read from the process and the store each time it is shown."""
    memory = process_memory()
    if loaded.model.device.type == "cuda":
        memory += f" · {torch.cuda.memory_allocated(loaded.model.device) / 2**20:,.0f} MB on the GPU"
    runs = jobs.refresh(store)
    counts = {status: sum(run["status"] == status for run in runs) for status in ("running", "queued")}
    exporting = sum(export["status"] == RUNNING for export in export_jobs.refresh(store))
    return (f"**Device:** {loaded.facts.device} · **Memory:** {memory} · "
            f"**Queue:** {counts['running']} running, {counts['queued']} queued"
            + (f" · {exporting} export{'s' * (exporting > 1)} running" if exporting else ""))


def process_memory() -> str:
    """This process's resident memory (Linux reads it now; elsewhere the peak is what the OS tells)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return f"{resident_pages * os.sysconf('SC_PAGE_SIZE') / 2**20:,.0f} MB in use by the app"
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_bytes = peak if sys.platform == "darwin" else peak * 1024
        return f"{peak_bytes / 2**20:,.0f} MB peak for the app"
