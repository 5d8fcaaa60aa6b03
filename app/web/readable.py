"""Which of the server's files the page reads when a person names one in a field (a dataset, an eval file, an
adapter folder to import), and which it serves for download.

The page runs with its user's rights, and before the Host guard (app.web.guard) any site could drive it; so even
for its own page it reads only: files under LORAFORGE_HOME (except the database), the bundled samples, and a path
typed into a field that says it takes one, as long as no part of that path is hidden (a folder such as ~/.ssh or
~/.config holds other tools' secrets and settings, not datasets). Devices, /proc, /sys and the system's
configuration (/etc, /run, /var/lib) are never read.
"""

import os
from pathlib import Path

from core import paths
from core.errors import LoraForgeError
from core.store.database import DB_NAME

SAMPLES = Path(__file__).resolve().parents[2] / "assets" / "samples"
SYSTEM = tuple(Path(folder) for folder in ("/proc", "/sys", "/dev", "/etc", "/run", "/boot", "/var/lib", "/var/run"))


def served_folders() -> list[Path]:
    """The only folders under LORAFORGE_HOME the page serves files from: what a person may download (exports,
    saved configs). Nothing else is offered for download."""
    folders = [paths.home() / "exports", paths.home() / "configs"]
    for folder in folders:
        folder.mkdir(exist_ok=True)
    return folders


def servable(path: Path) -> bool:
    """Whether the page may offer `path` for download (it lies in a served folder, links resolved)."""
    real = Path(path).resolve()
    return any(folder.resolve() in real.parents for folder in served_folders())


class NotReadable(LoraForgeError):
    """The page does not read this file for a person."""


def check_readable(typed: str, what: str = "The dataset") -> str:
    """`typed` as given, once the page may read it; NotReadable naming the way out otherwise."""
    path = Path(os.path.abspath(Path(typed).expanduser()))
    real = path.resolve()
    home = paths.home().resolve()
    if real.name.startswith(DB_NAME) and real.parent == home:
        raise NotReadable(f"{typed} is LoRA Forge's own database, which the page does not read. {what} must be "
                          "another file.")
    noun = "folder" if real.is_dir() else "file"
    if any(real == root or root in real.parents for root in SYSTEM):
        raise NotReadable(f"{typed} is a system {noun}, which the page does not read. {what} must lie outside "
                          f"{', '.join(map(str, SYSTEM))}.")
    if home in real.parents or SAMPLES.resolve() in real.parents:
        return typed
    hidden = next((part for part in real.parts if part.startswith(".") and part not in (".", "..")), None)
    if hidden:
        way_out = (f"Copy or link the models into a plain folder, or list them in a terminal with `launch.py models "
                   f"--dir {typed}`." if noun == "folder" else "Upload the file instead, or copy it to a plain folder.")
        raise NotReadable(f"{what} {typed} lies in a hidden folder ({hidden}), which holds other tools' files; the "
                          f"page does not read there. {way_out}")
    return typed
