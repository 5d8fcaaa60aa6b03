"""The three systems `train_throughput.py` compares, each run on exactly the same batches of the same examples.

    forge        LoRA Forge's own loop (`core.training.loop.train`), default settings apart from the LoRA shape (so on a
                 CPU with bf16 products, a bf16 base: see core.models.devices.training_dtype)
    forge-fp32   the same with an fp32 base, as the baselines have
    peft-padded  PEFT + transformers Trainer, DataCollatorForSeq2Seq (the usual dynamic padding)
    peft-flat    PEFT + transformers Trainer, DataCollatorWithFlattening (padding-free rows)

All three tokenize with LoRA Forge's renderer (chat template, loss on assistant tokens only), take the
batches of `core.data.epoch_plan` (seed 0, epoch 0) in order, use AdamW at lr 1e-3 with cosine decay and 5%
warm-up, clip at 1.0, normalise the loss per trained token of the step, and are scored by one eval function.
Each runs in its own process, so peak resident memory is its own.
"""

import json
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments

import core.models.quantize  # noqa: F401  (first: its log filter quiets the notice bitsandbytes prints when peft imports it)
from bench.flops import lora_step_flops, prefix_flops_saved
from core.data import BatchSettings, PreparedDataset, epoch_plan, prepare_dataset
from core.data.prefixes import prefix_groups
from core.data.render import IGNORE_INDEX
from core.lora.peft_format import load_adapter
from core.models.devices import resolve_device, resolve_dtype, training_dtype
from core.models.loading import load_base_model
from core.training.config import TrainConfig
from core.training.loop import train

SYSTEMS = ("forge", "forge-fp32", "peft-padded", "peft-flat")
FORGE_DTYPES = {"forge": "auto", "forge-fp32": "fp32"}
LORAS = {"r16-all": (16, "all-linear"), "r8-qv": (8, "qv")}
PEFT_TARGETS = {"all-linear": "all-linear", "qv": ["q_proj", "v_proj"]}
BATCH_SIZE, MAX_LEN, LR, WARMUP, CLIP = 8, 512, 1e-3, 0.05, 1.0


@dataclass
class Case:
    system: str
    lora: str
    train_file: str
    eval_file: str
    steps: int
    run_dir: Path


def run_case(case: Case) -> dict:
    """Train one system on one case; return its figures (tokens, seconds, losses, peak RSS, FLOPs)."""
    trainer = _train_forge if case.system in FORGE_DTYPES else _train_peft
    model, tokenizer, seconds, losses, peak_rss_mb = trainer(case)
    dtype = training_dtype(FORGE_DTYPES.get(case.system, "fp32"), "none", "auto")
    chosen, epoch_tokens = planned_examples(case, tokenizer)
    useful = useful_flops(model, chosen, lora_parameters(model))
    saved = shared_prefix_flops(model, chosen, lora_parameters(model)) if case.system in FORGE_DTYPES else 0
    return {
        "system": case.system,
        "dtype": str(resolve_dtype(dtype, resolve_device("auto"))).removeprefix("torch."),  # the base's, in training
        "lora": case.lora,
        "steps": case.steps,
        "tokens": sum(len(example.input_ids) for example in chosen),
        "epoch_tokens": epoch_tokens,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb,
        "train_loss": sum(losses[-5:]) / len(losses[-5:]),
        "eval_loss": eval_loss(model, prepare_dataset(case.eval_file, tokenizer, max_length=MAX_LEN)),
        "useful_flops": useful,
        "executed_flops": useful - saved,
        "threads": torch.get_num_threads(),
    }


def planned_examples(case: Case, tokenizer) -> tuple[list, int]:
    """The examples of the first `steps` batches, in order (what LoRA Forge's loop takes), and the epoch's tokens."""
    train = prepare_dataset(case.train_file, tokenizer, max_length=MAX_LEN)
    batches = epoch_plan(train.lengths, BatchSettings(batch_size=BATCH_SIZE), 0)[: case.steps]
    if len(batches) < case.steps:
        raise SystemExit(f"{case.train_file} has only {len(batches)} batches of {BATCH_SIZE}; ask for fewer --steps")
    return [train.examples[i] for batch in batches for i in batch], sum(train.lengths)


def _train_forge(case: Case) -> tuple:
    """Peak RSS is read right after training, before a fresh fp32 model is loaded with the adapter to be scored."""
    rank, targets = LORAS[case.lora]
    config = TrainConfig(dataset=case.train_file, eval_share=0, rank=rank, alpha=2 * rank, targets=targets,
                         max_steps=case.steps, batch_size=BATCH_SIZE, max_len=MAX_LEN, lr=LR, warmup_ratio=WARMUP,
                         max_grad_norm=CLIP, dtype=FORGE_DTYPES[case.system], sample_prompts=["Hello"],
                         sample_max_new_tokens=4)
    result = train(config, case.run_dir)
    peak_rss_mb = _peak_rss_mb()
    rows = [json.loads(line) for line in (case.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row["split"] == "train"]
    loaded = load_base_model("default", dtype="fp32")
    load_adapter(loaded.model, result.adapter_dir, name="trained")
    return loaded.model, loaded.tokenizer, result.tokens / result.tokens_per_s, losses, peak_rss_mb


def _train_peft(case: Case) -> tuple:
    loaded = load_base_model("default", dtype="fp32")
    chosen, _ = planned_examples(case, loaded.tokenizer)
    rank, targets = LORAS[case.lora]
    model = get_peft_model(loaded.model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                    target_modules=PEFT_TARGETS[targets], task_type="CAUSAL_LM"))
    features = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)}
                for e in chosen]
    collator = (DataCollatorWithFlattening() if case.system == "peft-flat"
                else DataCollatorForSeq2Seq(loaded.tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX))
    arguments = TrainingArguments(
        output_dir=str(case.run_dir), per_device_train_batch_size=BATCH_SIZE, max_steps=case.steps, learning_rate=LR,
        lr_scheduler_type="cosine", warmup_steps=math.ceil(WARMUP * case.steps), weight_decay=0.0, max_grad_norm=CLIP,
        optim="adamw_torch", logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[],
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, remove_unused_columns=False, seed=0,
        disable_tqdm=True,
    )
    clock = _Clock()
    trainer = _InOrderTrainer(model=model, args=arguments, train_dataset=features, data_collator=collator,
                              callbacks=[clock])
    trainer.train()
    peak_rss_mb = _peak_rss_mb()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return model, loaded.tokenizer, clock.seconds, losses, peak_rss_mb


class _InOrderTrainer(Trainer):
    """A Trainer that takes the examples in the order given (the plan's batches), not reshuffled."""

    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)


class _Clock(TrainerCallback):
    """Times the Trainer's training loop alone (model loading and data preparation excluded)."""

    def on_train_begin(self, *args, **kwargs) -> None:
        self.started = time.perf_counter()

    def on_train_end(self, *args, **kwargs) -> None:
        self.seconds = time.perf_counter() - self.started


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.inference_mode()
def eval_loss(model: torch.nn.Module, data: PreparedDataset) -> float:
    """Mean cross-entropy per trained token over the eval set, one example at a time (no padding, no packing)."""
    model.eval()
    total, count = 0.0, 0
    for example in data.examples:
        logits = model(input_ids=torch.tensor([example.input_ids], device=model.device)).logits[0, :-1].float()
        targets = torch.tensor(example.labels[1:], device=model.device)
        chosen = targets != IGNORE_INDEX
        total += float(F.cross_entropy(logits[chosen], targets[chosen], reduction="sum"))
        count += int(chosen.sum())
    return total / count


def shared_prefix_flops(model: torch.nn.Module, examples: list, lora_parameters: int) -> float:
    """What LoRA Forge's loop does not compute of `useful_flops`: on the CPU it lays each batch's shared
    opening tokens once per group (core/data/prefixes.py)."""
    batches = [examples[start : start + BATCH_SIZE] for start in range(0, len(examples), BATCH_SIZE)]
    groups = [group for batch in batches for group in prefix_groups(batch)]
    return prefix_flops_saved(model.config, lora_parameters, [(len(group.examples), group.prefix) for group in groups])


def lora_parameters(model: torch.nn.Module) -> int:
    """Every lora_A / lora_B element, in PEFT's model or ours."""
    return sum(p.numel() for name, p in model.named_parameters() if "lora_A" in name or "lora_B" in name)


def useful_flops(model: torch.nn.Module, examples: list, lora_parameters: int) -> float:
    """The FLOPs a LoRA step must do for these examples, whichever system does it (see bench/flops.py)."""
    trained = sum(sum(label != IGNORE_INDEX for label in example.labels[1:]) for example in examples)
    return lora_step_flops(model.config, lora_parameters, [len(example.input_ids) for example in examples], trained)
