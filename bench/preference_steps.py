"""Where a DPO step's time goes on the default model: the policy pass, the reference pass (the base with the adapter
off), and what computing each pair's shared prompt once saves. Same batches, in one process.

    python bench/preference_steps.py --dataset PAIRS.jsonl [--batches 4] [--threads N]

Prints one JSON object: median seconds of a DPO micro-batch (policy forward + backward + reference forward) with
and without shared prefixes, of the reference forward alone, the tokens the shared prefixes leave out, and the
largest relative difference between the two ways' losses (the sharing is exact, so only rounding). The reference
pass is what caching the reference log-probs for the whole dataset would save, from the second epoch on: the
cache itself costs one reference pass per pair.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a preference dataset (bench/learn_preferences.py writes one)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    os.environ.setdefault("LORAFORGE_HOME", tempfile.mkdtemp(prefix="loraforge-bench-"))

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from core.data import BatchSettings
    from core.data.preference import iterate_pair_batches, prepare_preferences
    from core.lora.model import add_adapter
    from core.models.loading import load_base_model
    from core.models.packed_attention import use_packed_attention
    from core.training.config import TrainConfig
    from core.training.loop import lora_settings
    from core.training.preference import PreferenceObjective, reference_log_probs

    config = TrainConfig(dataset=args.dataset, method="dpo", dtype="fp32", max_len=256)
    loaded = load_base_model("default", "fp32")
    model = loaded.model
    use_packed_attention(model)
    add_adapter(model, "default", lora_settings(config))
    model.train()
    pairs = prepare_preferences(args.dataset, loaded.tokenizer, config.max_len).examples
    objective = PreferenceObjective("dpo", beta=config.beta)

    def batches(share: bool) -> list:
        settings = BatchSettings(batch_size=config.batch_size, share_prefix=share)
        stream = iterate_pair_batches(pairs, settings, 0)
        return [next(stream) for _ in range(args.batches)]

    def step(batch) -> tuple[float, float]:
        started = time.perf_counter()
        loss, _ = objective.batch_loss(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started, float(loss.detach())

    def reference(batch) -> float:
        started = time.perf_counter()
        reference_log_probs(model, batch)
        return time.perf_counter() - started

    ways = {share: batches(share) for share in (False, True)}
    step(ways[True][0])  # warm-up
    seconds, references, gap = {False: [], True: []}, [], 0.0
    for plain, shared in zip(ways[False], ways[True]):
        (a, loss_a), (b, loss_b) = step(plain), step(shared)
        seconds[False].append(a)
        seconds[True].append(b)
        references.append(reference(shared))
        gap = max(gap, abs(loss_a - loss_b) / abs(loss_a))
    print(json.dumps({
        "batches": args.batches, "pairs_per_batch": config.batch_size, "threads": torch.get_num_threads(),
        "dpo_step_s_plain": round(statistics.median(seconds[False]), 2),
        "dpo_step_s_shared_prefix": round(statistics.median(seconds[True]), 2),
        "reference_pass_s": round(statistics.median(references), 2),
        "reference_share_of_step": round(statistics.median(references) / statistics.median(seconds[True]), 3),
        "row_tokens_plain": statistics.mean(b.input_ids.shape[1] for b in ways[False]),
        "row_tokens_shared": statistics.mean(b.input_ids.shape[1] for b in ways[True]),
        "largest_relative_loss_gap": gap,
    }))


if __name__ == "__main__":
    main()
