"""Where an export is written: into a hidden sibling first, renamed into place only when complete.

    check_target(out, force)   refuse an existing non-empty output unless --force, before any work starts
    with staging(out) as tmp:  write into tmp; on any error tmp is removed and `out` is untouched
    commit(tmp, out)           the finished export replaces `out` (an old one is removed only afterwards)
    remove_leftovers(out)      what a killed export left beside `out` goes

A full disk (or any other write failure) becomes one ExportError naming the path and the fix, and leaves
no partial files behind.
"""

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import LoraForgeError


class ExportError(LoraForgeError):
    """An export cannot be made as asked (bad output path, full disk, unsupported model)."""


def check_target(out: Path, force: bool) -> None:
    """Refuse to overwrite an existing file or non-empty folder unless `force`."""
    if out.is_dir() and not any(out.iterdir()):
        return
    if out.exists() and not force:
        kind = "folder" if out.is_dir() else "file"
        raise ExportError(
            f"The output {kind} {out} already exists and is not empty. Choose another output (--out), or replace "
            "it ('Force overwrite' in the page, --force on the command line); the old export is removed only once "
            "the new one is complete."
        )
    if not out.parent.is_dir():
        raise ExportError(f"The folder {out.parent} does not exist. Create it first, or choose another --out.")


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh hidden sibling of `out` to write into; removed afterwards unless it was committed."""
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except OSError as error:
        raise ExportError(_write_failure(out, error)) from None
    finally:
        _remove(tmp)


def commit(tmp: Path, out: Path) -> None:
    """Move the finished export into place; an export it replaces is removed only after the move."""
    old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists():
        out.rename(old)
    tmp.rename(out)
    _remove(old)


def folder_bytes(path: Path) -> int:
    """Size of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def _write_failure(out: Path, error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"The disk is full: writing the export {out} failed ({error.strerror}). The partial export was "
                "removed. Free some disk space (or choose an --out on another disk) and try again.")
    return (f"Writing the export {out} failed: {error.strerror or error}. The partial export was removed. "
            "Check that the folder is writable and try again.")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_leftovers(out: Path) -> None:
    """Remove what a killed export left beside `out`: its half-written hidden staging copies."""
    for leftover in out.parent.glob(f".{out.name}.partial-*"):
        _remove(leftover)
