"""What computing a batch's shared opening tokens once saves: the same batches, with and without, in one process.

    python bench/shared_prefix.py [--dataset FILE] [--lora r16-all|r8-qv] [--pairs 12]

The chat template's system prompt and a fixed instruction open every example of many datasets (29 of the
dates sample's ~65 tokens, ~45 among examples with the same instruction). With `share_prefix` a packed batch
holds each group's opening once (core/data/prefixes.py). This
takes the first `--pairs` batches of the epoch, runs each forward and backward both ways, the two taking
turns, and prints one JSON object: median seconds per step each way, their ratio, the row lengths, and the
largest relative difference between the two ways' losses and LoRA gradients (as one vector) (the sharing
is exact, so only rounding).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.training_steps import LORAS, first_batches, prepared_model, timed_step  # noqa: E402  (after the path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(REPO / "assets/samples/dates.train.jsonl"))
    parser.add_argument("--lora", choices=LORAS, default="r16-all")
    parser.add_argument("--pairs", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("LORAFORGE_HOME", tempfile.mkdtemp(prefix="loraforge-bench-"))

    import torch

    model, data, config = prepared_model(Path(args.dataset), args.lora)
    ways = {share: first_batches(data, config, args.pairs, share) for share in (False, True)}

    def step(batch) -> tuple[float, float, list]:
        seconds, loss = timed_step(model, batch)
        grads = [p.grad.flatten().clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        return seconds, loss, grads

    seconds, loss_gap, grad_gap = {False: [], True: []}, 0.0, 0.0
    step(ways[False][0])  # warm-up
    for plain, shared in zip(ways[False], ways[True]):
        a, b = step(plain), step(shared)
        seconds[False].append(a[0])
        seconds[True].append(b[0])
        loss_gap = max(loss_gap, abs(a[1] - b[1]) / abs(a[1]))
        grad_gap = max(grad_gap, float(torch.cat([x - y for x, y in zip(a[2], b[2])]).norm() / torch.cat(a[2]).norm()))
    plain_s, shared_s = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(json.dumps({
        "dataset": Path(args.dataset).name, "lora": args.lora, "pairs": len(seconds[True]),
        "row_tokens_plain": statistics.mean(b.input_ids.shape[1] for b in ways[False]),
        "row_tokens_shared": statistics.mean(b.input_ids.shape[1] for b in ways[True]),
        "saved_tokens": statistics.mean(b.saved_tokens for b in ways[True]),
        "step_s_plain": round(plain_s, 3), "step_s_shared": round(shared_s, 3),
        "speed-up": round(plain_s / shared_s, 3),
        "largest_relative_loss_difference": loss_gap, "largest_relative_gradient_difference": grad_gap,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
