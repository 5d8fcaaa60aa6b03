"""Preference tuning on a task the project generates: does DPO teach the default model a preference the base does
not have, how fast, and how does our DPO compare with TRL's DPOTrainer + PEFT on the same pairs and settings.

    python bench/learn_preferences.py [--steps 60] [--lr 2e-3] [--base default] [--no-trl] [--threads N] [--home DIR]

The task: prompts ask the model to pick one of two options (a colour, or a number), in a random order; the chosen
answer names the warm colour (red, orange...) or the even number, the rejected one the cool colour or the odd
number, in the same words ("Red." / "Blue."). The base has no such preference, so it ranks the pairs near chance;
held-out pairs use prompt wordings and option pairs that training never saw.

Prints one JSON object: held-out preference accuracy (log p(chosen) > log p(rejected)) and mean margin of the base
and of the adapter, the adapter's reward accuracy against the base (DPO's own measure), the minutes of training,
and tokens/s and final train loss of our DPO and of TRL's on the same pairs, steps, batch, learning rate, beta,
rank and targets (fp32 both, one process, one after the other). Tokens are counted alike for both: every pair's
chosen and rejected sequence, prompt included.
"""

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WARM = ["red", "orange", "yellow", "gold", "pink", "amber", "coral", "scarlet"]
COOL = ["blue", "green", "purple", "grey", "teal", "navy", "cyan", "silver"]
COLOUR_PROMPTS = ["Pick one colour for the poster: {} or {}?", "Which colour should the door be, {} or {}?",
                  "Choose a colour for my scarf: {} or {}.", "Answer with one colour: {} or {}?",
                  "I can paint the fence {} or {}. Which one?",
                  # held out: wordings training never sees
                  "Select a colour for the logo, {} or {}?", "What colour for the car: {} or {}?"]
NUMBER_PROMPTS = ["Pick a number: {} or {}?", "Which number do you choose, {} or {}?",
                  "Answer with one number: {} or {}.", "Give me either {} or {}.",
                  "Choose between {} and {}.",
                  "Name your pick, {} or {}?", "Which is your number: {} or {}?"]
TRAIN_WORDINGS = 5
SETTINGS = dict(rank=8, alpha=16, targets="qv", lr=2e-3, batch_size=8, beta=0.1, max_len=256)


def make_pairs(count: int, held_out: bool, seed: int) -> list[dict]:
    """`count` pairs, half colours and half numbers; the held-out ones use the held-out wordings."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        if i % 2:
            good, bad, wordings = rng.choice(WARM), rng.choice(COOL), COLOUR_PROMPTS
        else:
            good, bad, wordings = str(2 * rng.randrange(1, 50)), str(2 * rng.randrange(1, 50) - 1), NUMBER_PROMPTS
        wording = rng.choice(wordings[TRAIN_WORDINGS:] if held_out else wordings[:TRAIN_WORDINGS])
        first, second = (good, bad) if rng.random() < 0.5 else (bad, good)
        rows.append({"prompt": [{"role": "user", "content": wording.format(first, second)}],
                     "chosen": [{"role": "assistant", "content": f"{good.capitalize()}."}],
                     "rejected": [{"role": "assistant", "content": f"{bad.capitalize()}."}]})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def train_ours(base: str, train_file: str, eval_file: str, steps: int, folder: Path) -> dict:
    from core.training.config import TrainConfig
    from core.training.loop import train

    config = TrainConfig(base=base, dataset=train_file, eval_file=eval_file, method="dpo", dtype="fp32",
                         max_steps=steps, eval_every=steps, save_every=steps, sample_max_new_tokens=4,
                         **{k: v for k, v in SETTINGS.items()})
    started = time.perf_counter()
    result = train(config, folder)
    return {"adapter_dir": result.adapter_dir, "seconds_with_loading": time.perf_counter() - started,
            "loop_seconds": result.tokens / result.tokens_per_s, "tokens": result.tokens,
            "tokens_per_s": result.tokens_per_s, "final_loss": result.train_loss, "peak_mem_mb": result.peak_mem_mb}


def train_trl(model_folder: Path, rows: list[dict], steps: int, folder: Path) -> dict:
    """TRL's DPOTrainer with a PEFT LoRA adapter (the reference: the base with the adapter disabled, as ours)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    args = DPOConfig(output_dir=str(folder), per_device_train_batch_size=SETTINGS["batch_size"], max_steps=steps,
                     learning_rate=SETTINGS["lr"], beta=SETTINGS["beta"], lr_scheduler_type="cosine",
                     warmup_steps=math.ceil(0.05 * steps), logging_steps=1, save_strategy="no", report_to=[],
                     use_cpu=True, max_length=SETTINGS["max_len"], bf16=False, seed=0, dataloader_num_workers=0,
                     gradient_checkpointing=False)  # ours keeps activations too
    peft = LoraConfig(r=SETTINGS["rank"], lora_alpha=SETTINGS["alpha"], lora_dropout=0.0,
                      target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    losses, clock = [], {}

    class Timing(TrainerCallback):
        def on_train_begin(self, *_, **__):
            clock["start"] = time.perf_counter()

        def on_train_end(self, *_, **__):
            clock["end"] = time.perf_counter()

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft, callbacks=[Timing()])
    trainer.train()
    return {"loop_seconds": clock["end"] - clock["start"], "final_loss": losses[-1] if losses else None,
            "losses": losses}


def pair_tokens(train_file: str, tokenizer, steps: int) -> int:
    """Tokens our run's `steps` batches hold, counted as TRL would see them: each pair's two whole sequences."""
    from core.data import BatchSettings
    from core.data.preference import iterate_pair_batches, prepare_preferences

    pairs = prepare_preferences(train_file, tokenizer, SETTINGS["max_len"]).examples
    batches = iterate_pair_batches(pairs, BatchSettings(batch_size=SETTINGS["batch_size"]), 0)
    return sum(next(batches).tokens for _ in range(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--base", default="default")
    parser.add_argument("--train-pairs", type=int, default=320)
    parser.add_argument("--eval-pairs", type=int, default=64)
    parser.add_argument("--lr", type=float, default=SETTINGS["lr"])
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice); on a machine whose "
                                                    "cores other jobs share, 1 avoids threads waiting on each other")
    parser.add_argument("--home", help="LORAFORGE_HOME to use (default: a fresh temporary folder)")
    args = parser.parse_args()
    os.environ["LORAFORGE_HOME"] = args.home or tempfile.mkdtemp(prefix="loraforge-bench-")
    SETTINGS["lr"] = args.lr
    work = Path(os.environ["LORAFORGE_HOME"])
    work.mkdir(parents=True, exist_ok=True)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from core.lora.model import active_adapters
    from core.lora.peft_format import load_adapter
    from core.models.loading import load_base_model, resolve_source
    from core.training.evaluate import evaluate_preferences

    train_rows = make_pairs(args.train_pairs, held_out=False, seed=0)
    train_file = write_jsonl(train_rows, work / "prefs.train.jsonl")
    eval_file = write_jsonl(make_pairs(args.eval_pairs, held_out=True, seed=1), work / "prefs.eval.jsonl")
    loaded = load_base_model(args.base, "fp32")  # converts the default model's GGUF once, outside the timing
    base_scores = evaluate_preferences(loaded.model, loaded.tokenizer, eval_file)

    ours = train_ours(args.base, train_file, eval_file, args.steps, work / "ours")
    load_adapter(loaded.model, ours.pop("adapter_dir"), name="dpo")
    with active_adapters(loaded.model, "dpo"):
        adapter_scores = evaluate_preferences(loaded.model, loaded.tokenizer, eval_file, against_base=True)
    tokens = pair_tokens(train_file, loaded.tokenizer, args.steps)
    figures = {
        "base": args.base, "steps": args.steps, "train_pairs": args.train_pairs, "eval_pairs": args.eval_pairs,
        "settings": SETTINGS, "threads": torch.get_num_threads(),
        "heldout_preference_accuracy_base": base_scores.preference_accuracy,
        "heldout_preference_accuracy_adapter": adapter_scores.preference_accuracy,
        "heldout_mean_margin_base": round(base_scores.mean_margin, 3),
        "heldout_mean_margin_adapter": round(adapter_scores.mean_margin, 3),
        "heldout_reward_accuracy_adapter": adapter_scores.reward_accuracy,
        "ours": {"train_minutes": round(ours["loop_seconds"] / 60, 2),
                 "minutes_with_loading": round(ours["seconds_with_loading"] / 60, 2),
                 "tokens_per_s": round(tokens / ours["loop_seconds"], 1),
                 "final_loss": round(ours["final_loss"], 4), "peak_mem_mb": round(ours["peak_mem_mb"])},
        "pair_tokens": tokens,
    }
    if not args.no_trl:
        trl = train_trl(Path(resolve_source(args.base)[0]), train_rows, args.steps, work / "trl")
        figures["trl"] = {"train_minutes": round(trl["loop_seconds"] / 60, 2),
                          "tokens_per_s": round(tokens / trl["loop_seconds"], 1),
                          "final_loss": round(trl["final_loss"], 4)}
        figures["speedup_vs_trl"] = round(trl["loop_seconds"] / ours["loop_seconds"], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
