"""A run trained by several processes: the launching side (the job or terminal process that recorded the run) and
each rank's side (`python -m core.jobs.worker rank ...`, started by torchrun's agent).

    train_in_ranks(run)  -> torchrun's agent starts config.nproc ranks here (of nproc x nodes in all) and waits;
                            rank 0 records metrics and samples in the store as a single process would; the outcome
                            is rank 0's result.json, or, when a rank died, an interrupted run (resume continues it)
    rank_main(argv)      -> one rank: joins the process group, trains its share, rank 0 writes
    other_node(config)   -> a machine other than node 0 of a multi-node run: its ranks train, node 0 records

A rank is started in a session of its own by the agent, out of reach of a cancel's signal to the job's process
group, so each rank dies with its agent (Linux's parent-death signal): a cancel leaves no rank behind.
"""

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

from core.errors import LoraForgeError
from core.store.database import Store
from core.training.checkpoint import newest_checkpoint
from core.training.config import TrainConfig
from core.training.distributed import check_devices, check_same_settings, join_world, leave_world
from core.training.events import event_line, log_events, timestamped
from core.training.launcher import Nodes, RanksFailed, RanksStopped, launch_ranks
from core.training.loop import TrainingError, TrainResult, train
from core.training.run_folder import RunFolder

RANK_ERROR = "rank_error.txt"  # what rank 0 refused (bad data, NaN loss), for the launching process to raise


def train_in_ranks(run_id: str | None, config: TrainConfig, run_dir: Path, resume: bool, nodes: Nodes = Nodes(),
                   log: Path | None = None) -> TrainResult:
    """Train the run in `run_dir` with config.nproc ranks on this machine (and nodes.count machines); rank 0 records
    in the store under `run_id` and, given `log`, writes its progress lines there too."""
    check_devices(config.nproc, config.device)
    folder = RunFolder(run_dir)
    for stale in (folder.result, folder.path / RANK_ERROR):
        stale.unlink(missing_ok=True)
    command = ["-m", "core.jobs.worker", "rank", str(folder.path), *(["--resume"] if resume else []),
               *(["--run-id", run_id] if run_id else []), *(["--log", str(log)] if log else [])]
    try:
        launch_ranks(command, config.nproc, nodes)
    except (RanksFailed, RanksStopped) as failure:
        refused = folder.path / RANK_ERROR
        if refused.is_file():
            raise TrainingError(refused.read_text().strip()) from None
        if isinstance(failure, RanksFailed) and not failure.killed:  # a rank's own error: its traceback is logged
            raise TrainingError(f"{failure}. Its error is in the run's log.") from None
        print(timestamped(f"{failure} The run can resume from its newest checkpoint."), file=sys.stderr, flush=True)
        return _interrupted(folder)
    if not folder.result.is_file():
        return _interrupted(folder)
    return TrainResult(**json.loads(folder.result.read_text()))


def other_node(config: TrainConfig, nodes: Nodes) -> int:
    """Serve as machine `nodes.rank` (> 0) of a multi-node run: its ranks train beside node 0's, which alone records
    and writes; the config and data paths must be the same on every machine. 0 when the run completed."""
    with tempfile.TemporaryDirectory(prefix="loraforge-node-") as scratch:
        RunFolder(Path(scratch)).write_config(config)
        try:
            launch_ranks(["-m", "core.jobs.worker", "rank", scratch], config.nproc, nodes)
        except (RanksFailed, RanksStopped) as failure:
            print(json.dumps({"node_rank": nodes.rank, "status": "interrupted", "reason": str(failure)}), flush=True)
            return 3
    print(json.dumps({"node_rank": nodes.rank, "status": "completed"}), flush=True)
    return 0


def rank_main(argv: list[str]) -> int:
    """One rank of a distributed run (its environment set by torchrun): 0 completed or stopped cleanly, 2 refused."""
    parser = argparse.ArgumentParser(prog="core.jobs.worker rank")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--run-id")
    parser.add_argument("--log")
    args = parser.parse_args(argv)
    _die_with_parent()
    folder = RunFolder(Path(args.run_dir))
    config = folder.read_config()
    world = join_world(config.device)
    try:
        check_same_settings(world, {k: v for k, v in dataclasses.asdict(config).items() if k != "name"})
        if world.writer and args.run_id:
            from core.jobs.runs import store_recorder

            with Store() as store:
                train(config, folder.path, args.resume, store_recorder(store, args.run_id, _lines(args.log)))
        else:
            train(config, folder.path, args.resume, _lines(args.log) if world.writer else None)
    except LoraForgeError as error:
        if world.writer:
            (folder.path / RANK_ERROR).write_text(str(error))
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        leave_world()
    return 0


def _lines(log: str | None):
    """Rank 0's progress lines: on stderr (a background job's is its job.log), and in `log` when given (a run in a
    terminal, whose Runs-tab log is its job.log)."""
    def say(kind: str, payload: dict) -> None:
        log_events(kind, payload)
        if log and (line := event_line(kind, payload)):
            with open(log, "a") as handle:
                handle.write(timestamped(line) + "\n")
    return say


def _interrupted(folder: RunFolder) -> TrainResult:
    """What a run that stopped before its end has to show: its newest checkpoint's figures."""
    newest = newest_checkpoint(folder.path)
    state = json.loads((newest / "state.json").read_text()) if newest else {}
    tokens, elapsed = state.get("tokens", 0), state.get("elapsed", 0.0)
    return TrainResult(run_dir=str(folder.path), adapter_dir=None, status="interrupted", steps=state.get("step", 0),
                       total_steps=state.get("total_steps", 0), train_loss=state.get("train_loss"),
                       eval_loss=state.get("eval_loss"), tokens=tokens,
                       tokens_per_s=tokens / elapsed if elapsed else 0.0, peak_mem_mb=0.0, trainable_parameters=0,
                       skipped_rows=0)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this rank when the agent that started it dies (a cancel's SIGKILL reaches the agent's
    process group only); elsewhere the agent's own shutdown is all there is."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the agent died before the request took hold
        os._exit(1)
