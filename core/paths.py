"""Where LoRA Forge keeps what it writes: everything lives under LORAFORGE_HOME (default ~/.loraforge)."""

import os
from pathlib import Path


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
