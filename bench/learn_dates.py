"""How long the default model takes to learn the bundled dates task with default settings, and how well.

    python bench/learn_dates.py [--home DIR]

Prints one JSON object: minutes of training (the loop alone, and with model loading), tokens/s, and
exact match of the base model and of the adapter on the held-out set. The target on a 2-core CPU:
at most 5 minutes of training, exact match from near 0 to at least 90%.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="LORAFORGE_HOME to use (default: a fresh temporary folder)")
    args = parser.parse_args()
    os.environ["LORAFORGE_HOME"] = args.home or tempfile.mkdtemp(prefix="loraforge-bench-")

    from core.lora.model import active_adapters
    from core.lora.peft_format import load_adapter
    from core.models.loading import load_base_model
    from core.training.config import TrainConfig
    from core.training.evaluate import evaluate
    from core.training.loop import train

    train_file, eval_file = (str(REPO / "assets/samples/dates.train.jsonl"),
                             str(REPO / "assets/samples/dates.eval.jsonl"))
    load_base_model("default")  # convert the GGUF once, outside the timing
    started = time.perf_counter()
    result = train(TrainConfig(dataset=train_file, eval_file=eval_file),
                   Path(os.environ["LORAFORGE_HOME"]) / "bench-run")
    with_loading = time.perf_counter() - started
    loaded = load_base_model("default")
    load_adapter(loaded.model, result.adapter_dir, name="dates")
    with active_adapters(loaded.model, {}):
        base = evaluate(loaded.model, loaded.tokenizer, eval_file)
    adapter = evaluate(loaded.model, loaded.tokenizer, eval_file)
    print(json.dumps({
        "train_loop_minutes": round(result.tokens / result.tokens_per_s / 60, 2),
        "train_minutes_with_loading": round(with_loading / 60, 2),
        "steps": result.steps, "tokens_per_s": round(result.tokens_per_s, 1), "peak_mem_mb": round(result.peak_mem_mb),
        "exact_match_base": base.exact_match, "exact_match_adapter": adapter.exact_match,
        "eval_loss_base": round(base.loss, 4), "eval_loss_adapter": round(adapter.loss, 4),
        "threads": __import__("torch").get_num_threads(), "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
