"""Datasets uploaded in the page: kept under LORAFORGE_HOME/uploads/<hash>/<name> (Gradio's own temporary copy may
vanish before a resume), and removed again once no run uses them, so uploads cannot fill the disk."""

import shutil
import time
from pathlib import Path

from core import paths
from core.jobs.runs import file_sha256
from core.store.database import Store

UNUSED_UPLOAD_SECONDS = 24 * 3600  # an upload no run names is kept this long, for the person to start one


def uploads_dir() -> Path:
    return paths.home() / "uploads"


def keep_uploaded_dataset(path: Path) -> Path:
    """A lasting copy of an uploaded dataset (messages and run names keep its name)."""
    target = uploads_dir() / file_sha256(path)[:12] / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copyfile(path, target)
    return target


def prune_uploads(store: Store, older_than: float = UNUSED_UPLOAD_SECONDS) -> list[Path]:
    """Remove the kept uploads that no run names as its dataset or eval file and that are older than
    `older_than` seconds; only folders this module made (uploads/<hash>/) are touched. Returns those removed."""
    used = set()
    for run in store.list_runs():
        for value in (run["dataset_path"], (run["config"] or {}).get("eval_file")):
            if value:
                used.add(Path(value).resolve().parent)
    removed = []
    for folder in sorted(uploads_dir().glob("*/")) if uploads_dir().is_dir() else []:
        if folder.is_symlink() or not folder.is_dir() or folder.resolve() in used:
            continue
        if time.time() - folder.stat().st_mtime > older_than:
            shutil.rmtree(folder)
            removed.append(folder)
    return removed
