"""What keeping freed memory in the process (core/training/allocator.py) does to a training step: processes with and
without it, taking turns.

    python bench/allocator.py [--dataset dates|chat] [--lora r16-all|r8-qv] [--pairs 3] [--steps 8]

The setting is process-wide, so each way runs in processes of its own: `--pairs` times a process with glibc's
usual thresholds, then one with `keep_freed_memory()`, each timing forward and backward of the epoch's first
`--steps` batches after a warm-up step. Printed per process: seconds, row tokens per second, minor page faults
per step and peak resident memory; then each pair's speed ratio and their median.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.training_steps import LORAS, first_batches, prepared_model, timed_step  # noqa: E402  (after the path)

WAYS = ("usual", "keep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["dates", "chat"], default="chat")
    parser.add_argument("--lora", choices=LORAS, default="r16-all")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--worker", choices=WAYS, help=argparse.SUPPRESS)  # time one way in this process
    args = parser.parse_args()
    os.environ.setdefault("LORAFORGE_HOME", tempfile.mkdtemp(prefix="loraforge-bench-"))
    if args.worker:
        return print(json.dumps(_time_steps(args)))
    rows = []
    for _ in range(args.pairs):
        for way in WAYS:
            command = [sys.executable, __file__, "--worker", way, "--dataset", args.dataset, "--lora", args.lora,
                       "--steps", str(args.steps)]
            done = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ)
            rows.append(json.loads(done.stdout.splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    ratios = [keep["tokens_per_s"] / usual["tokens_per_s"] for usual, keep in zip(rows[::2], rows[1::2])]
    print(json.dumps({"dataset": args.dataset, "lora": args.lora, "keep_vs_usual": [round(r, 3) for r in ratios],
                      "median": round(statistics.median(ratios), 3)}))


def _time_steps(args) -> dict:
    from bench.chat_set import write_chat_set
    from core.training.allocator import keep_freed_memory

    kept = args.worker == "keep" and keep_freed_memory()
    home = Path(os.environ["LORAFORGE_HOME"])
    dataset = write_chat_set(home)[0] if args.dataset == "chat" else REPO / "assets/samples/dates.train.jsonl"
    model, data, config = prepared_model(dataset, args.lora)
    batches = first_batches(data, config, args.steps + 1)
    timed_step(model, batches[0])  # warm-up
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = 0.0
    for batch in batches[1:]:
        model.zero_grad(set_to_none=True)
        seconds += timed_step(model, batch)[0]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    tokens = sum(batch.input_ids.numel() for batch in batches[1:])
    return {"way": args.worker, "kept": kept, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "faults_per_step": round((usage.ru_minflt - faults_before) / args.steps),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


if __name__ == "__main__":
    main()
