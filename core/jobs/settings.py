"""How the background supervisor runs jobs: how many at once, and whether interrupted runs resume by themselves.

Read from LORAFORGE_HOME/settings.json (keys `max_jobs`, `auto_resume`), overridden by the environment
(LORAFORGE_MAX_JOBS, LORAFORGE_AUTO_RESUME). Read afresh on every call, so a change made while the
supervisor runs takes effect on its next round.
"""

import os
from dataclasses import dataclass

from core.settings_file import SETTINGS_FILE, SettingsError, read_settings

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class JobSettings:
    max_jobs: int = 1  # training jobs running at once; the rest wait in the queue
    auto_resume: bool = False  # the supervisor queues interrupted runs again by itself


def load_job_settings() -> JobSettings:
    """The job settings in force now (defaults, then settings.json, then the environment)."""
    values = read_settings()
    max_jobs = os.environ.get("LORAFORGE_MAX_JOBS", values.get("max_jobs", JobSettings.max_jobs))
    auto_resume = os.environ.get("LORAFORGE_AUTO_RESUME", values.get("auto_resume", JobSettings.auto_resume))
    return JobSettings(max_jobs=_positive_int("max_jobs", max_jobs), auto_resume=_flag("auto_resume", auto_resume))


def _positive_int(name: str, value: object) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise SettingsError(
            f"{name} is {value!r}; it must be a whole number of 1 or more (LORAFORGE_MAX_JOBS or {SETTINGS_FILE})."
        )
    return number


def _flag(name: str, value: object) -> bool:
    text = str(value).strip().lower()
    if text not in _TRUE + _FALSE:
        raise SettingsError(
            f"{name} is {value!r}; use 1/true/on or 0/false/off (LORAFORGE_AUTO_RESUME or {SETTINGS_FILE})."
        )
    return text in _TRUE
