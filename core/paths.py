"""Where LoRA Forge keeps what it writes: everything lives under LORAFORGE_HOME (default ~/.loraforge), and every
name a person types becomes a path there through `named_path`."""

import os
import re
from pathlib import Path

from core.errors import LoraForgeError


def home() -> Path:
    """The data folder, created on first use. Read from the environment each call so tests can redirect it."""
    path = Path(os.environ.get("LORAFORGE_HOME") or Path.home() / ".loraforge").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Cached converted base models (safetensors folders)."""
    path = home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


MAX_NAME_LENGTH = 120


def slug(text: str) -> str:
    """A file-name form of free text (an adapter's name for its folder): every run of characters other than
    letters, digits, '.', '_' and '-' becomes '-', and no '-' or '.' is left at either end."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-.")


class UnsafeName(LoraForgeError):
    """A name a person typed cannot become a file name inside LoRA Forge's folders."""


def named_path(folder: Path, name: str, suffix: str = "", what: str = "The name") -> Path:
    """Where a name a person typed (a run's, a saved config's, an export's) lives inside `folder`: the one gate
    every such name passes, so none writes outside. Refused, naming the fix: an empty name, one with a path
    separator or a control character, one starting with '.' ('..' included), an absolute path, an overlong one."""
    text = name.strip()
    problem = None
    if not text:
        problem = "is empty"
    elif "/" in text or "\\" in text or Path(text).is_absolute():
        problem = "holds a path separator"
    elif text.startswith("."):
        problem = "starts with '.'"
    elif any(ord(char) < 32 or ord(char) == 127 for char in text):
        problem = "holds a control character"
    elif len(text) > MAX_NAME_LENGTH:
        problem = f"is longer than {MAX_NAME_LENGTH} characters"
    if problem:
        raise UnsafeName(f"{what} {name!r} {problem}, so it cannot be a file name in {folder}. Use letters, digits, "
                         "spaces, '-', '_' or '.', e.g. pirate-v2.")
    path = folder / f"{text}{suffix}"
    if path.resolve().parent != folder.resolve():  # a link planted in the folder under this name
        raise UnsafeName(f"{path} is a link out of {folder}. Choose another name, or remove that link.")
    return path
