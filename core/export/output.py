"""Where an export is written: into a hidden sibling first, renamed into place only when complete.

    check_target(out, force)   refuse an existing non-empty output unless --force, before any work starts;
                               even with it, refuse what LoRA Forge did not write, and any symbolic link
    with staging(out) as tmp:  write into tmp; on any error tmp is removed and `out` is untouched
    commit(tmp, out)           the finished export, marked as LoRA Forge's, replaces `out` (an old one is removed
                               only afterwards)
    remove_leftovers(out)      what a killed export left beside `out` goes

Force overwrite replaces only an earlier export: a folder holding the MARK file, or a zip whose comment is
ZIP_MARK. A folder of the person's own is never deleted, and a link is never followed. A full disk (or any other
write failure) becomes one ExportError naming the path and the fix, and leaves no partial files behind.
"""

import errno
import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import LoraForgeError

MARK = ".loraforge-export"  # in every exported folder: what Force overwrite may replace
ZIP_MARK = b"Exported by LoRA Forge"  # the comment of every exported zip


class ExportError(LoraForgeError):
    """An export cannot be made as asked (bad output path, full disk, unsupported model)."""


def check_target(out: Path, force: bool, recorded: bool = False) -> None:
    """Refuse to overwrite an existing file or non-empty folder unless `force`, and even then unless LoRA Forge
    wrote it (marked, or `recorded` as an export of its own); refuse a symbolic link whatever it points to."""
    if out.is_symlink():
        raise ExportError(f"The output {out} is a symbolic link; LoRA Forge never writes through one. Choose the "
                          "folder it points to, or another output.")
    if out.is_dir() and not any(out.iterdir()):
        return
    kind = "folder" if out.is_dir() else "file"
    if out.exists() and force and not written_here(out):
        if recorded and (out.is_dir() or zipfile.is_zipfile(out)):
            _mark(out)  # an export of LoRA Forge's from before the marker: marked now, so it can be replaced
            return
        raise ExportError(f"The output {kind} {out} holds files LoRA Forge did not write, so it is left alone: "
                          f"Force overwrite replaces only an earlier export. Choose another output, or move that "
                          f"{kind} away yourself.")
    if out.exists() and not force:
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
    """Mark the finished export as LoRA Forge's and move it into place; an export it replaces (checked again
    here: it may have changed while this one was written) is removed only after the move."""
    _mark(tmp)
    old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists() or out.is_symlink():
        check_target(out, force=True)
        out.rename(old)
    tmp.rename(out)
    _remove(old)


def written_here(path: Path) -> bool:
    """Whether `path` is an export LoRA Forge wrote (and so may replace): a marked folder or zip, not a link."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return (path / MARK).is_file()
    if not path.is_file():
        return False  # a device or a pipe: nothing LoRA Forge writes
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.comment == ZIP_MARK
    except (zipfile.BadZipFile, OSError):
        return False


def _mark(tmp: Path) -> None:
    if tmp.is_dir():
        (tmp / MARK).write_text("This folder is an export of LoRA Forge; Force overwrite may replace it.\n")
    else:
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.comment = ZIP_MARK


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
