"""Starting the ranks of a distributed run with torchrun's elastic agent, inside this process (as torchtune's
`tune run` does), so `launch.py train --nproc N` and a background job need no separate `torchrun` command.

    one machine    rendezvous on a free local port (torchrun --standalone)
    several        static rendezvous at node 0's host:port (torchrun --nnodes --node-rank --rdzv-endpoint):
                   every machine runs the same command with its own --node-rank

No restarts: a rank that dies ends the run. The agent watches its ranks every MONITOR_S seconds and stops the rest
(SIGTERM, then SIGKILL after SHUTDOWN_S); ranks blocked in a collective time out (core/training/distributed.py), so
nothing hangs, and the run resumes from its newest checkpoint, with the same or another number of processes.
"""

import logging
import os
import signal
import uuid
from dataclasses import dataclass

from core.errors import LoraForgeError

MONITOR_S = 0.5
SHUTDOWN_S = 30
JOIN_TIMEOUT_SETTING = "LORAFORGE_RDZV_TIMEOUT"
DEFAULT_JOIN_TIMEOUT_S = 300  # how long the machines of a multi-node run wait for each other to start


class RanksFailed(LoraForgeError):
    """A rank of a distributed run ended with an error or a signal; the others were stopped. `killed`: the first
    to fail was killed by a signal (the run is interrupted, and resumes), rather than failing on its own."""

    def __init__(self, message: str, killed: bool = False):
        super().__init__(message)
        self.killed = killed


class RanksStopped(LoraForgeError):
    """The launching process was asked to stop (a cancel, Ctrl-C); its ranks were stopped with it."""


@dataclass(frozen=True)
class Nodes:
    """The machines of a run: `count` of them, this one number `rank`, meeting at node 0's `endpoint` (host:port)."""

    count: int = 1
    rank: int = 0
    endpoint: str | None = None

    def check(self) -> "Nodes":
        if self.count < 1 or not 0 <= self.rank < self.count:
            raise RanksFailed(f"--node-rank is {self.rank} of --nnodes {self.count}; number the machines 0 to "
                              f"{self.count - 1} (0 is the one that records the run).")
        if self.count > 1 and not _host_port(self.endpoint):
            raise RanksFailed(f"--rdzv-endpoint is {self.endpoint!r}; several machines meet at node 0's address "
                              "and a free port, e.g. --rdzv-endpoint 10.0.0.1:29500, the same on every machine.")
        return self


def launch_ranks(command: list[str], nproc: int, nodes: Nodes = Nodes()) -> None:
    """Run `command` (a Python command line after the interpreter) as `nproc` ranks on this machine, of
    `nproc x nodes.count` in all; return when every rank ended well. RanksFailed names the first rank that did not;
    RanksStopped says this process was signalled (its ranks got the same signal first)."""
    import sys

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nodes.check()
    join = {"timeout": _join_timeout()}
    if nodes.count == 1:
        where = dict(rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", rdzv_configs=join, run_id=str(uuid.uuid4()))
    else:
        where = dict(rdzv_backend="static", rdzv_endpoint=nodes.endpoint, rdzv_configs={**join, "rank": nodes.rank},
                     run_id="loraforge")
    config = LaunchConfig(min_nodes=nodes.count, max_nodes=nodes.count, nproc_per_node=nproc, max_restarts=0,
                          monitor_interval=MONITOR_S, shutdown_timeout=SHUTDOWN_S, **where)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    try:
        elastic_launch(config, entrypoint=sys.executable)(*command)
    except ChildFailedError as failed:
        first = min(failed.failures.items(), key=lambda item: item[1].timestamp)
        raise RanksFailed(_in_words(*first), killed=first[1].exitcode < 0) from None
    except SignalException as stopped:
        raise RanksStopped(f"Stopped by {signal.Signals(stopped.sigval).name}; the ranks were stopped too.") from None


def _in_words(rank: int, failure) -> str:
    code = failure.exitcode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    return f"rank {rank} (pid {failure.pid}) {how}, so the others were stopped"


def _host_port(endpoint: str | None) -> bool:
    host, _, port = (endpoint or "").rpartition(":")
    return bool(host) and port.isdigit()


def _join_timeout() -> int:
    value = os.environ.get(JOIN_TIMEOUT_SETTING, str(DEFAULT_JOIN_TIMEOUT_S))
    if not value.isdigit() or int(value) < 1:
        raise RanksFailed(f"{JOIN_TIMEOUT_SETTING} is {value!r}; give the seconds machines wait for each other "
                          f"(e.g. {DEFAULT_JOIN_TIMEOUT_S}).")
    return int(value)
