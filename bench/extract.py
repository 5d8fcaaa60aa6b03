"""What an extracted adapter keeps of a full fine-tune, by rank: the curve people need to choose a rank.

    python bench/extract.py [--steps 40] [--ranks 4,8,16,32,64] [--home DIR]

Makes a full fine-tune of the embedded default model (every weight trained for `--steps` AdamW steps on the
bundled dates task), then for each rank extracts an adapter from it (core.lora.extract, in a process of its own so
its peak memory is its own) and scores base + adapter on the held-out dates set beside the base and the full
fine-tune. Prints a markdown table (seconds and peak RSS of each extraction, eval loss, exact match) and one
JSON line.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TRAIN, EVAL = REPO / "assets/samples/dates.train.jsonl", REPO / "assets/samples/dates.eval.jsonl"
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec, VmHWM starts afresh
EXTRACT_ONE = """
import json, sys, time
from pathlib import Path
from core.lora.extract import extract_from_checkpoints
started = time.perf_counter()
report = extract_from_checkpoints(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), rank=int(sys.argv[4]))
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mb": peak / 1024,
                  "max_relative_error": report.max_relative_error, "other_change_share": report.other_change_share}))
"""


def full_fine_tune(base: Path, out: Path, steps: int) -> float:
    """Train every weight of `base` on the dates task for `steps` steps; save to `out`; seconds taken."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.data import prepare_dataset

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    examples = prepare_dataset(str(TRAIN), tokenizer, max_length=128).examples
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        batch = examples[(step * 8) % len(examples):][:8]
        width = max(len(e.input_ids) for e in batch)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in batch])
        labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in batch])
        loss = model(input_ids=ids, attention_mask=(ids != pad).long(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - started
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return seconds


def score(source: str, adapter: Path | None = None) -> dict:
    from core.lora.model import active_adapters
    from core.lora.peft_format import load_adapter
    from core.models.loading import load_base_model
    from core.training.evaluate import evaluate

    loaded = load_base_model(source, dtype="fp32")
    if adapter is not None:
        load_adapter(loaded.model, adapter, name="x", activate=False)
    with active_adapters(loaded.model, "x" if adapter else None):
        scores = evaluate(loaded.model, loaded.tokenizer, str(EVAL), max_len=128)
    return {"eval_loss": scores.loss, "exact_match": scores.exact_match}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ranks", default="4,8,16,32,64")
    parser.add_argument("--home", help="LORAFORGE_HOME to use (default: a fresh temporary folder)")
    args = parser.parse_args()
    os.environ["LORAFORGE_HOME"] = args.home or tempfile.mkdtemp(prefix="loraforge-bench-")
    from core.models.loading import resolve_source

    base = Path(resolve_source("default")[0])  # the converted default model's safetensors folder
    work = Path(tempfile.mkdtemp(prefix="extract-bench-"))
    tuned = work / "tuned"
    train_seconds = full_fine_tune(base, tuned, args.steps)
    rows = [{"model": "base", **score(str(base))}, {"model": "full fine-tune", **score(str(tuned))}]
    for rank in map(int, args.ranks.split(",")):
        out = work / f"r{rank}"
        done = subprocess.run([sys.executable, "-c", EXTRACT_ONE, str(base), str(tuned), str(out), str(rank)],
                              cwd=REPO, capture_output=True, text=True, check=True)
        rows.append({"model": f"extracted r{rank}", **json.loads(done.stdout.strip().splitlines()[-1]),
                     **score(str(base), out)})
    print(f"full fine-tune: {args.steps} steps in {train_seconds:.0f} s; this process's peak RSS (both whole models, "
          f"the optimizer) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB\n")
    print("| model | extraction s | extraction peak RSS | largest layer error | eval loss | exact match |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        extraction = (f"{row['seconds']:.1f} | {row['peak_rss_mb']:.0f} MB | {row['max_relative_error']:.3f}"
                      if "seconds" in row else " | | ")
        print(f"| {row['model']} | {extraction} | {row['eval_loss']:.4f} | {row['exact_match']:.0%} |")
    print(json.dumps({"steps": args.steps, "rows": rows}))


if __name__ == "__main__":
    main()
