"""Distributed training: 1 against N processes on the same global batch, and the DDP wrapper's own cost.

    python bench/distributed.py [--base default] [--steps 16] [--batch-size 8] [--nproc 1,2] [--overhead-steps 16]

Part 1 trains the same run (fp32, the bundled dates task, the same seed and global batch) with each process count
through `launch.py train --nproc N`, one after another, and prints per count: tokens/s (median step, the first left
out), the bytes one step all-reduced (rank 0's metrics rows), peak memory of each rank, and the largest difference of
the final adapter's weights from the first count's. On a CPU the processes share its cores (each takes its share),
so N processes show the harness's cost, not a speed-up; on N GPUs they show the scaling. A last row is the control:
one process with each micro-batch split in two (half the batch size, twice the accumulation), the same global batch
and the same sums in another order, which shows how far fp32 rounding alone moves the adapter.

Part 2 is the DDP wrapper's overhead in one process: the same loop (core.training.loop.train), alone and then inside
a process group of one, where the decoder runs through DistributedDataParallel (NCCL on CUDA, gloo on a CPU); the
rounds alternate, and each is reported by its median step.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATES = REPO / "assets" / "samples" / "dates.train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="default")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--nproc", default="1,2", help="process counts to compare, the first the reference")
    parser.add_argument("--overhead-steps", type=int, default=16, help="steps per round of part 2 (0: skip it)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of part 2")
    parser.add_argument("--home", help="LORAFORGE_HOME (default: a fresh temporary folder)")
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="loraforge-bench-"))
    os.environ["LORAFORGE_HOME"] = str(home)
    print(f"machine: {machine()}")
    counts = [int(n) for n in args.nproc.split(",")]
    runs = [train_with(n, args, home) for n in counts]
    labels = [str(n) for n in counts]
    if args.batch_size % 2 == 0:
        runs.append(train_with(1, args, home, split=2))
        labels.append(f"1, micro-batches of {args.batch_size // 2} x 2 (control)")
    reference = runs[0]["adapter"]
    print("\n| processes | tokens/s | all-reduced per step | peak memory per rank | largest weight difference |")
    print("|---|---|---|---|---|")
    for count, run in zip(labels, runs):
        difference = max(float((run["adapter"][k] - reference[k]).abs().max()) for k in reference)
        memory = ", ".join(f"{mb:,.0f} MB" for mb in run["rank_memory_mb"])
        print(f"| {count} | {run['tokens_per_s']:,.0f} | {run['allreduce_bytes']:,} B | {memory} | {difference:.2e} |")
    if args.overhead_steps:
        wrapper_overhead(args)


def train_with(nproc: int, args, home: Path, split: int = 1) -> dict:
    from safetensors.torch import load_file

    command = [sys.executable, "launch.py", "train", "--base", args.base, "--dataset", str(DATES), "--dtype", "fp32",
               "--max-steps", str(args.steps), "--batch-size", str(args.batch_size // split), "--grad-accum",
               str(split), "--eval-share", "0",
               "--save-every", str(args.steps), "--eval-every", str(10 * args.steps), "--nproc", str(nproc),
               "--name", f"bench-nproc{nproc}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
    if done.returncode:
        sys.exit(f"nproc {nproc} failed:\n{done.stderr[-3000:]}")
    final = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (Path(final["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    print(f"nproc {nproc}: {time.perf_counter() - started:.0f} s in all (model loading included)", flush=True)
    return {
        "tokens_per_s": statistics.median(row["tokens_per_s"] for row in train[1:]),
        "allreduce_bytes": train[-1].get("allreduce_bytes", 0),
        "rank_memory_mb": train[-1].get("rank_memory_mb", [train[-1]["memory_mb"]]),
        "adapter": load_file(Path(final["adapter_dir"]) / "adapter_model.safetensors"),
    }


def wrapper_overhead(args) -> None:
    """Median step seconds of the loop alone and inside a process group of one (DDP over the decoder)."""
    import torch
    import torch.distributed as dist

    from core.training.config import TrainConfig
    from core.training.loop import train

    config = TrainConfig(base=args.base, dataset=str(DATES), dtype="fp32", max_steps=args.overhead_steps,
                         batch_size=args.batch_size, eval_share=0, save_every=10**6, eval_every=10**6)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    seconds: dict[str, list[float]] = {"no wrapper": [], "DDP wrapper": []}
    for round_number in range(args.rounds):
        for name in seconds:
            if name == "DDP wrapper":
                os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29400 + round_number), RANK="0",
                                  WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
                dist.init_process_group(backend, device_id=torch.device("cuda", 0) if backend == "nccl" else None)
            folder = Path(tempfile.mkdtemp(prefix="overhead-"))
            train(config, folder)
            rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            steps = [row["tokens"] for row in rows if row["split"] == "train"]
            rates = [row["tokens_per_s"] for row in rows if row["split"] == "train"][1:]
            seconds[name].append(statistics.median((b - a) / r for a, b, r in zip(steps, steps[1:], rates)))
            if dist.is_initialized():
                dist.destroy_process_group()
    alone, wrapped = (statistics.median(values) for values in seconds.values())
    print(f"\nDDP wrapper overhead ({backend}, 1 process, median of {args.rounds} rounds x "
          f"{args.overhead_steps} steps): {alone * 1000:.1f} ms/step alone, {wrapped * 1000:.1f} ms/step wrapped, "
          f"{100 * (wrapped / alone - 1):+.1f}%")


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "CPU")
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


if __name__ == "__main__":
    main()
