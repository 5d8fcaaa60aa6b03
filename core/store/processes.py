"""Is a recorded job process still that same process? A pid alone is not enough: the OS reuses pids,
so a job is identified by its pid plus its start time, and a reused pid with another start time is dead."""

import os
from pathlib import Path

_PROC = Path("/proc")


def process_start_time(pid: int) -> float | None:
    """Seconds after boot at which process `pid` started (Linux /proc), or None if it is gone or a zombie.

    Off Linux there is no /proc and this returns None; `process_alive` then falls back to the pid alone.
    """
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses, so count fields after its last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # exited, only waiting for its parent to reap it
        return None
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in clock ticks


def process_alive(pid: int | None, start_time: float | None) -> bool:
    """True if `pid` runs and, where a start time was recorded, is the process that started at that time."""
    if pid is None or pid <= 0:
        return False
    if (_PROC / "self" / "stat").exists():
        current = process_start_time(pid)
        return current is not None and (start_time is None or current == start_time)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists but belongs to another user
        return True
    return True
