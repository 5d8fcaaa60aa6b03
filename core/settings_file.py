"""LORAFORGE_HOME/settings.json, the one settings file: read whole for the job settings (core.jobs.settings), and
one key written back for a choice the app remembers between sessions (the last models folder scanned).

A person may edit the file by hand while the supervisor reads it every round, so a write replaces it whole
(written aside, then renamed) and keeps every other key; a file that is not a JSON object is never overwritten.
"""

import json
import os

from core import paths
from core.errors import LoraForgeError
from core.files import read_text_capped

SETTINGS_FILE = "settings.json"
MAX_BYTES = 1 << 16


class SettingsError(LoraForgeError):
    """The settings file, or a value in it, is something LoRA Forge cannot use."""


def read_settings() -> dict:
    """The settings file's object ({} when there is no file); SettingsError naming the fix when it is unreadable."""
    file = paths.home() / SETTINGS_FILE
    if not file.is_file():
        return {}
    try:
        values = json.loads(read_text_capped(file, MAX_BYTES, what="The settings file"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise SettingsError(f"{file} is not readable JSON ({error}). Fix it or delete it to use the defaults.")
    if not isinstance(values, dict):
        raise SettingsError(f"{file} must hold a JSON object such as {{\"max_jobs\": 1, \"auto_resume\": true}}.")
    return values


def remembered(key: str) -> str:
    """A remembered text choice, or "" when none is (or the file cannot be read: remembering is a convenience)."""
    try:
        value = read_settings().get(key, "")
    except LoraForgeError:
        return ""
    return value if isinstance(value, str) else ""


def remember(key: str, value: str) -> None:
    """Keep `value` under `key`, every other setting as it was. Skipped when the file cannot be read."""
    try:
        values = read_settings()
    except LoraForgeError:
        return
    if values.get(key) == value:
        return
    file = paths.home() / SETTINGS_FILE
    staging = file.with_name(f".{SETTINGS_FILE}.partial-{os.getpid()}")
    staging.write_text(json.dumps({**values, key: value}, indent=2) + "\n")
    staging.replace(file)
