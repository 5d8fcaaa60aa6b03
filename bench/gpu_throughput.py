"""Training throughput on a CUDA GPU: LoRA (bf16) and QLoRA (nf4) through LoRA Forge's own training loop, on
random-initialised Llama-architecture models of 0.5B to 3B parameters, and PEFT + transformers Trainer on the
same model and the same tokens for comparison.

    python bench/gpu_throughput.py [--sizes 0.5b,1b,3b] [--modes lora,qlora] [--peft-sizes 1b]
                                   [--seq 2048] [--batch 4] [--steps 12] [--profile 1b] [--out DIR]

Every case trains r=16 all-linear (alpha 32) on rows of exactly --seq random tokens, --batch of them per
step, in its own process (so peak memory is its own). LoRA Forge runs `core.training.loop.train` with the app's
defaults (packed rows, per-example attention, LM head on trained positions, bf16 autocast); PEFT runs
Trainer with bf16 and the same examples in the same order. Printed per case: median tokens/s over the steps
after the first 3 (warm-up), peak GPU memory (max allocated), the memory of the quantizable weights, the
last train loss, and MFU: useful FLOPs (bench/flops.py) per second over the dense bf16 matmul rate of
8192^3 products measured in this run (the datasheet's 989 TFLOP/s for H100/H200 SXM is printed beside it).

`--device cpu --sizes tiny` checks the harness without a GPU (fp32, peak RSS instead of GPU memory).
"""

import argparse
import gc
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

import torch  # noqa: E402  (after the path is set)
from transformers import TrainerCallback  # noqa: E402

from bench.flops import lora_step_flops  # noqa: E402
from bench.random_llama import SIZES, build_model_folder, write_token_rows  # noqa: E402

RANK, ALPHA, LR, WARMUP_STEPS = 16, 32, 1e-4, 3
QUANT = {"lora": "none", "qlora": "nf4"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.5b,1b,3b")
    parser.add_argument("--modes", default="lora,qlora")
    parser.add_argument("--peft-sizes", default="1b", help="sizes also trained with PEFT + Trainer ('' for none)")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per example")
    parser.add_argument("--batch", type=int, default=4, help="examples per optimizer step")
    parser.add_argument("--steps", type=int, default=12,
                        help=f"optimizer steps per case (the first {WARMUP_STEPS} are warm-up)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--timeout", type=float, default=240, help="seconds before a case is abandoned")
    parser.add_argument("--profile", help="also train this size's LoRA once under torch.profiler and print the top "
                        "GPU kernels (not timed)")
    parser.add_argument("--out", help="folder for models, runs and results (default: a temporary folder)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON case: run one case in this process
    args = parser.parse_args()
    if args.worker:
        return print(json.dumps(run_case(json.loads(args.worker))))

    out = Path(args.out or tempfile.mkdtemp(prefix="loraforge-gpu-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine(args.device)
    print(json.dumps(machine), flush=True)
    results = []
    for size in args.sizes.split(","):
        systems = ["forge", "peft"] if size in args.peft_sizes.split(",") else ["forge"]
        for mode in args.modes.split(","):
            for system in systems:
                case = dict(system=system, size=size, mode=mode, seq=args.seq, batch=args.batch, steps=args.steps,
                            device=args.device, out=str(out))
                row = run_worker(case, args.timeout)
                results.append(row)
                print(json.dumps(row), flush=True)
                with (out / "results.jsonl").open("a") as log:
                    log.write(json.dumps(row) + "\n")
    print(report(results, machine))
    if args.profile:
        case = dict(system="forge", size=args.profile, mode="lora", seq=args.seq, batch=args.batch, steps=args.steps,
                    device=args.device, out=str(out), profile=True)
        print(run_worker(case, args.timeout).get("kernels", "profiling failed"))


def run_worker(case: dict, timeout: float) -> dict:
    """One case in a fresh process; a failure or a hang becomes a row that says so, and the others still run."""
    command = [sys.executable, __file__, "--worker", json.dumps(case)]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timed out after {timeout:.0f} s"}
    if finished.returncode != 0:
        return {**case, "error": finished.stderr[-3000:]}
    return {**case, **json.loads(finished.stdout.strip().splitlines()[-1])}


def describe_machine(device: str) -> dict:
    """The device, the library versions, and its measured dense matmul rate (bf16 on CUDA, fp32 on the CPU)."""
    import transformers

    facts = {"torch": torch.__version__, "transformers": transformers.__version__}
    if device == "cuda":
        facts |= {"device": torch.cuda.get_device_name(), "matmul_peak_tflops": cuda_matmul_peak() / 1e12}
    else:
        from bench.train_throughput import matmul_peak

        facts |= {"device": f"CPU, {torch.get_num_threads()} threads", "matmul_peak_tflops": matmul_peak() / 1e12}
    return facts


def cuda_matmul_peak(size: int = 8192, repeats: int = 20) -> float:
    """Median FLOP/s of bf16 size^3 products on random data, timed with CUDA events after a warm-up."""
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * size**3 / statistics.median(times)


def run_case(case: dict) -> dict:
    """Build (or reuse) the model and data, then train with the case's system; return its figures."""
    out, size = Path(case["out"]), case["size"]
    dtype = torch.bfloat16 if case["device"] == "cuda" else torch.float32
    folder = build_model_folder(size, out / f"model-{size}", case["device"], dtype)
    rows, vocab = case["steps"] * case["batch"], SIZES[size]["vocab_size"]
    data = out / f"tokens-{case['seq']}x{rows}-vocab{vocab}.jsonl"
    if not data.exists():
        write_token_rows(data, rows, case["seq"], vocab)
    trainer = train_forge if case["system"] == "forge" else train_peft
    if case.get("profile"):
        return {"kernels": profiled(trainer, case, folder, data)}
    figures = trainer(case, folder, data)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    step_tokens = case["batch"] * case["seq"]
    flops = lora_step_flops(config, figures.pop("lora_parameters"), [case["seq"]] * case["batch"],
                            case["batch"] * (case["seq"] - 1))
    seconds = statistics.median(figures.pop("step_seconds")[WARMUP_STEPS:])
    return {**figures, "tokens_per_s": step_tokens / seconds, "step_seconds": seconds, "step_tflop": flops / 1e12,
            "parameters": sum(p.numel() for p in _meta_model(config).parameters())}


def profiled(trainer, case: dict, folder: Path, data: Path) -> str:
    """The kernels that took the most device time over a whole training run, as torch.profiler's table."""
    from torch.profiler import ProfilerActivity, profile

    device_activity = ProfilerActivity.CUDA if case["device"] == "cuda" else ProfilerActivity.CPU
    with profile(activities=[device_activity]) as profiler:
        trainer(case, folder, data)
    sort = "cuda_time_total" if case["device"] == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=70)


def train_forge(case: dict, folder: Path, data: Path) -> dict:
    from core.models.loading import load_base_model
    from core.training.config import TrainConfig
    from core.training.loop import train

    dtype = "bf16" if case["device"] == "cuda" else "fp32"
    loaded = load_base_model(str(folder), dtype, QUANT[case["mode"]], case["device"])
    weight_mb = loaded.facts.linear_weight_bytes / 2**20
    del loaded
    _release_memory(case["device"])
    config = TrainConfig(base=str(folder), dataset=str(data), eval_share=0, rank=RANK, alpha=ALPHA,
                         targets="all-linear", quant=QUANT[case["mode"]], dtype=dtype, device=case["device"],
                         max_len=case["seq"], batch_size=case["batch"], max_steps=case["steps"], lr=LR,
                         save_every=10**6, eval_every=10**6, sample_prompts=["1 2 3"], sample_max_new_tokens=1)
    run_dir = Path(case["out"]) / f"run-{case['size']}-{case['mode']}{'-profiled' if case.get('profile') else ''}"
    result = train(config, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if row["split"] == "train"]
    step_tokens = case["batch"] * case["seq"]
    return {"step_seconds": [step_tokens / row["tokens_per_s"] for row in steps], "peak_memory_mb": result.peak_mem_mb,
            "weight_mb": weight_mb, "train_loss": steps[-1]["loss"], "lora_parameters": result.trainable_parameters}


def train_peft(case: dict, folder: Path, data: Path) -> dict:
    """PEFT + Trainer, bf16 mixed precision; QLoRA through transformers' bitsandbytes config (nf4, double quant)."""
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from core.data import prepare_dataset

    cuda = case["device"] == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    quantization = None
    if case["mode"] == "qlora":
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, quantization_config=quantization,
                                                 device_map={"": case["device"]}, attn_implementation="sdpa")
    weight_mb = _linear_weight_mb(model)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    examples = prepare_dataset(str(data), tokenizer, max_length=case["seq"]).examples
    features = [{"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)}
                for e in examples]
    clock = StepClock(cuda)
    arguments = TrainingArguments(
        output_dir=str(Path(case["out"]) / f"peft-{case['size']}-{case['mode']}"),
        per_device_train_batch_size=case["batch"], max_steps=case["steps"], learning_rate=LR, bf16=cuda,
        optim="adamw_torch", max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", eval_strategy="no", report_to=[], use_cpu=not cuda, dataloader_num_workers=0,
        remove_unused_columns=False, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=arguments, train_dataset=features, callbacks=[clock],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_A" in name or "lora_B" in name)
    return {"step_seconds": clock.seconds, "peak_memory_mb": _peak_memory_mb(case["device"]), "weight_mb": weight_mb,
            "train_loss": losses[-1], "lora_parameters": lora}


class StepClock(TrainerCallback):
    """Wall time of each of Trainer's optimizer steps, the GPU's queue drained at both ends."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.seconds = cuda, []

    def on_step_begin(self, *args, **kwargs) -> None:
        self._sync()
        self.started = time.perf_counter()

    def on_step_end(self, *args, **kwargs) -> None:
        self._sync()
        self.seconds.append(time.perf_counter() - self.started)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def _linear_weight_mb(model: torch.nn.Module) -> float:
    from core.models.quantize import weight_bytes

    return weight_bytes(model, quantizable_only=True) / 2**20


def _peak_memory_mb(device: str) -> float:
    from core.training.loop import peak_memory_mb

    return peak_memory_mb(torch.device(device))


def _release_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _meta_model(config) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def report(results: list[dict], machine: dict) -> str:
    """One markdown table: a row per case, MFU against the measured peak; then QLoRA against LoRA per size."""
    peak = machine["matmul_peak_tflops"]
    lines = [f"{machine['device']}; torch {machine['torch']}, transformers {machine['transformers']}; "
             f"measured dense matmul peak {peak:.3g} TFLOP/s", "",
             "| model | mode | system | tokens/s | step s | peak memory GB | linear weights GB | last loss | MFU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in results:
        name = f"{row['size']} ({row['parameters'] / 1e9:.2f}B)" if "parameters" in row else row["size"]
        if "error" in row:
            lines.append(f"| {name} | {row['mode']} | {row['system']} | "
                         f"failed: {row['error'].splitlines()[-1][:120]} |")
            continue
        mfu = row["step_tflop"] / row["step_seconds"] / peak
        lines.append(f"| {name} | {row['mode']} | {row['system']} | {row['tokens_per_s']:,.0f} | "
                     f"{row['step_seconds']:.3f} | {row['peak_memory_mb'] / 1024:.1f} | "
                     f"{row['weight_mb'] / 1024:.2f} | {row['train_loss']:.3f} | {mfu:.0%} |")
    done = {(row["size"], row["mode"], row["system"]): row for row in results if "error" not in row}
    for (size, mode, system), row in done.items():
        lora = done.get((size, "lora", system))
        if mode == "qlora" and lora:
            lines.append(f"\n{size} {system}: QLoRA at {row['tokens_per_s'] / lora['tokens_per_s']:.2f}x "
                         f"LoRA's tokens/s, linear weights {row['weight_mb'] / lora['weight_mb']:.2f}x, peak memory "
                         f"{row['peak_memory_mb'] / lora['peak_memory_mb']:.2f}x")
        peft = done.get((size, mode, "peft"))
        if system == "forge" and peft:
            lines.append(f"\n{size} {mode}: LoRA Forge at {row['tokens_per_s'] / peft['tokens_per_s']:.2f}x "
                         f"PEFT + Trainer's tokens/s, peak memory "
                         f"{row['peak_memory_mb'] / peft['peak_memory_mb']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
