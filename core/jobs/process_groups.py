"""Stopping a job's whole process tree. Each job runs in its own session, so its process group holds the
job and everything it started; signalling the group reaches them all, and /proc tells when none is left."""

import os
import signal
import time
from pathlib import Path

from core.store.processes import process_alive, process_start_time


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group `pgid`, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def stop_group(leader: int, leader_start_time: float | None, grace: float = 5.0) -> bool:
    """SIGTERM the process group led by `leader`, SIGKILL what is left after `grace` seconds, and wait until
    none of it lives. The leader is checked by start time first, so the group of a reused pid is left alone.
    Returns True when nothing of the group is alive."""
    leader_gone = process_start_time(leader) is None  # its pid cannot be reused while its group lives on
    if not (process_alive(leader, leader_start_time) or leader_gone):
        return True
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(leader, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while group_members(leader):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return True
    return not group_members(leader)
