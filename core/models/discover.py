"""Finding base models under a folder a person names: Hugging Face folders (config.json beside *.safetensors or
*.bin weights) and .gguf files, each described from its metadata (core.models.found).

The folder may be a home directory, so the walk is bounded: MAX_DEPTH levels below the folder, MAX_ENTRIES
entries looked at. It skips hidden names (.git, .cache), follows a link only when it stays inside the folder and
enters each real folder once (so a link loop ends), does not look inside a model folder, and notes what it could
not read or left out rather than failing.
"""

import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from core.models.errors import ModelSourceError
from core.models.found import FoundModel, describe_folder, describe_gguf, first_line

MAX_DEPTH = 3
MAX_ENTRIES = 500
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass
class Scan:
    folder: Path
    models: list[FoundModel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out or unreadable, for the person to see


def scan_models(folder: str | Path, max_depth: int = MAX_DEPTH, max_entries: int = MAX_ENTRIES) -> Scan:
    """Every model folder and .gguf file under `folder`, in path order; ModelSourceError naming the fix when
    `folder` is not a folder."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise ModelSourceError(f"The models folder {folder} does not exist. Check the path: name the folder that "
                               "holds your model folders and .gguf files.")
    if not root.is_dir():
        raise ModelSourceError(f"{folder} is a file, not a folder. Name the folder that holds your model folders "
                               f"and .gguf files, e.g. {root.parent}.")
    scan, walk = Scan(root), _Walk(root.resolve(), max_depth, max_entries)
    for kind, path in walk.candidates(root):
        try:
            scan.models.append(describe_gguf(path) if kind == "gguf" else describe_folder(path))
        except OSError as error:
            scan.models.append(FoundModel(path, kind, problem=first_line(error)))
    scan.notes = walk.notes()
    return scan


def is_model_folder(names: set[str]) -> bool:
    return "config.json" in names and any(name.endswith(WEIGHT_SUFFIXES) for name in names)


class _Walk:
    """Breadth first, so the shallow models are found before the entry limit is reached."""

    def __init__(self, root: Path, max_depth: int, max_entries: int) -> None:
        self.root, self.max_depth, self.max_entries = root, max_depth, max_entries
        self.looked, self.links_out, self.too_deep, self.unreadable, self.stopped = 0, 0, 0, [], False

    def candidates(self, top: Path):
        """("folder" | "gguf", path) for each model found."""
        seen, queue = {self.root}, deque([(top, 0)])
        while queue:
            folder, depth = queue.popleft()
            try:
                entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
            except OSError as error:
                self.unreadable.append(f"{folder} ({error.strerror or error})")
                continue
            if is_model_folder({entry.name for entry in entries}):
                yield "folder", Path(folder)
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if self.looked >= self.max_entries:
                    self.stopped = True
                    return
                self.looked += 1
                try:
                    real = Path(entry.path).resolve()
                    if real != self.root and self.root not in real.parents:
                        self.links_out += 1  # only a link leads out of the folder
                    elif entry.is_dir():
                        if real in seen:
                            continue
                        seen.add(real)
                        if depth < self.max_depth:
                            queue.append((Path(entry.path), depth + 1))
                        else:
                            self.too_deep += 1
                    elif entry.name.endswith(".gguf") and entry.is_file():
                        yield "gguf", Path(entry.path)
                except (OSError, RuntimeError) as error:  # RuntimeError: a link to itself (a loop)
                    self.unreadable.append(f"{entry.path} ({getattr(error, 'strerror', None) or error})")

    def notes(self) -> list[str]:
        notes = []
        if self.stopped:
            notes.append(f"Stopped after looking at {self.max_entries} files and folders; name a folder closer to "
                         "the models to see the rest.")
        if self.too_deep:
            notes.append(f"{self.too_deep} folder(s) more than {self.max_depth} levels down were not searched.")
        if self.links_out:
            notes.append(f"{self.links_out} link(s) leading outside the folder were not followed.")
        notes += [f"Could not read {what}." for what in self.unreadable]
        return notes
