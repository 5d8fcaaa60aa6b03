"""Chat decoding speed and memory: base model, merged adapter, unmerged adapter, and 4-way side-by-side chat.

    python bench/chat_latency.py [--tokens 48] [--rounds 3] [--loras r8-qv,r16-all]

One process per LoRA shape, on the embedded default model (fp32, greedy, KV cache, the same chat prompt).
Four adapters are loaded into the one base model, then the modes take turns, round after round, so
machine noise hits them alike; each mode's figure is its best round:
    base           no adapter active (each LoRA layer returns the base layer's output untouched)
    unmerged       adapter a0 applied on the fly: LoRA Forge's layer, what the Chat tab runs
    merged         a0 folded into the weights for the round, then taken out again
    four-way       a0..a3 answering in turn, as the Chat tab's four columns do
    peft-unmerged  a0 in PEFT's LoRA layer on a second copy of the base (reference; measured after the RSS figures)

Decode tokens/s excludes the prompt: per token = (time for N new tokens - time for 1) / (N - 1).
That figure includes transformers' generate loop and drifts with the machine, so a second, finer one times
single decode steps (one token through the model with its KV cache), the modes taking turns step by step and
each reported as its median over --steps steps: base here is a plain copy with no LoRA layers at all, merged a
copy with a0 merged and unloaded, unmerged and peft-unmerged as above.
Adapters have random non-zero weights; speed depends on their shape only. Resident memory (RSS) is read
after loading the base and again with the four adapters loaded: one copy of the base weights means the
difference is about the adapters' own bytes.
"""

import argparse
import contextlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("base", "unmerged", "merged", "four-way", "peft-unmerged")
PROMPT = "Tell me a short story about a lighthouse keeper who finds a message in a bottle."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per answer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200, help="single decode steps per mode for the step medians")
    parser.add_argument("--loras", default="r8-qv,r16-all")
    parser.add_argument("--home", help="LORAFORGE_HOME (default: a fresh temporary folder)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # LORA: measure one LoRA shape in this process
    args = parser.parse_args()
    os.environ["LORAFORGE_HOME"] = args.home or tempfile.mkdtemp(prefix="loraforge-bench-")
    if args.worker:
        return print(json.dumps(measure(args.worker, args.tokens, args.rounds, args.steps)))

    from core.models.loading import load_base_model

    load_base_model("default")  # convert the GGUF once, outside any timing
    results = []
    for lora in args.loras.split(","):
        command = [sys.executable, __file__, "--home", os.environ["LORAFORGE_HOME"], "--tokens", str(args.tokens),
                   "--rounds", str(args.rounds), "--steps", str(args.steps), "--worker", lora]
        finished = subprocess.run(command, capture_output=True, text=True)
        if finished.returncode != 0:
            raise SystemExit(f"{lora} failed:\n{finished.stderr[-4000:]}")
        results.append(json.loads(finished.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(report(results))
    print(json.dumps(results))


def measure(lora: str, tokens: int, rounds: int, steps: int) -> dict:
    import copy

    import torch
    from peft import PeftModel

    from bench.throughput_systems import LORAS
    from core.chat.generate import conversation
    from core.lora.model import (
        LoraSettings,
        active_adapters,
        add_adapter,
        merge,
        merge_and_unload,
        set_active,
        unload,
        unmerge,
    )
    from core.lora.peft_format import save_adapter
    from core.models.loading import load_base_model

    torch.manual_seed(0)
    loaded = load_base_model("default", dtype="fp32")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    rss_base = _rss_mb()
    rank, targets = LORAS[lora]
    names = [f"a{i}" for i in range(4)]
    for name in names:
        add_adapter(model, name, LoraSettings(r=rank, alpha=2 * rank, targets=targets), activate=False)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if "lora_B" in parameter_name:
                parameter.normal_(std=0.02)
    adapter_mb = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n) / 2**20
    rss_four = _rss_mb()
    folder = Path(tempfile.mkdtemp()) / "adapter"
    save_adapter(model, "a0", folder)
    peft_model = PeftModel.from_pretrained(load_base_model("default", dtype="fp32").model, folder).eval()
    ids = tokenizer.apply_chat_template(conversation(PROMPT), add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]

    def decode(mode: str) -> float:
        if mode == "peft-unmerged":
            return _seconds_per_new_token(peft_model, ids, tokens)
        if mode == "four-way":
            columns = []
            for name in names:
                with active_adapters(model, name):
                    columns.append(_seconds_per_new_token(model, ids, tokens))
            return sum(columns) / len(columns)
        with active_adapters(model, None if mode == "base" else "a0"):
            if mode != "merged":
                return _seconds_per_new_token(model, ids, tokens)
            merge(model)
            try:
                return _seconds_per_new_token(model, ids, tokens)
            finally:
                unmerge(model)

    best = {mode: float("inf") for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            best[mode] = min(best[mode], decode(mode))
    plain, merged = unload(copy.deepcopy(model)), copy.deepcopy(model)
    set_active(merged, "a0")
    step_modes = {"base": (plain, None), "unmerged": (model, "a0"), "merged": (merge_and_unload(merged), None),
                  "peft-unmerged": (peft_model, None)}
    step_ms = _step_medians(step_modes, ids, steps)
    return {"lora": lora, "ms_per_token": {mode: 1000 * seconds for mode, seconds in best.items()}, "step_ms": step_ms,
            "rss_base_mb": rss_base, "rss_four_adapters_mb": rss_four, "adapters_mb": adapter_mb,
            "threads": torch.get_num_threads()}


def _seconds_per_new_token(model, ids, tokens: int) -> float:
    import torch

    def timed(count: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=count,
                           min_new_tokens=count, do_sample=False, temperature=None, top_p=None, top_k=None)
        return time.perf_counter() - started

    return (timed(tokens) - timed(1)) / (tokens - 1)


def _step_medians(modes: dict, ids, steps: int) -> dict[str, float]:
    """Median ms of one decode step per mode; each mode keeps its own KV cache, and the modes take turns every
    step so the machine's drift hits them alike. `modes`: name -> (model, adapter to activate or None)."""
    import statistics

    import torch
    from transformers import LlamaForCausalLM

    from core.lora.model import active_adapters

    # transformers 5.24 renamed the KV cache's argument and output field to `cache` (the old name goes in 5.40)
    cache = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
    token = ids[:, -1:]
    caches, times = {}, {name: [] for name in modes}
    with torch.inference_mode():
        for name, (model, adapter) in modes.items():
            with active_adapters(model, adapter) if adapter else contextlib.nullcontext():
                caches[name] = model(input_ids=ids, use_cache=True)[cache]
        for _ in range(steps):
            for name, (model, adapter) in modes.items():
                with active_adapters(model, adapter) if adapter else contextlib.nullcontext():
                    started = time.perf_counter()
                    model(input_ids=token, use_cache=True, **{cache: caches[name]})
                    times[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def report(results: list[dict]) -> str:
    lines = ["| LoRA | mode | decode tokens/s | ms/token | vs base |", "|---|---|---|---|---|"]
    for row in results:
        base = row["ms_per_token"]["base"]
        for mode, ms in row["ms_per_token"].items():
            lines.append(f"| {row['lora']} | {mode} | {1000 / ms:.1f} | {ms:.1f} | {ms / base - 1:+.1%} |")
    lines += ["", "Single decode steps, median ms (modes interleaved step by step):", "",
              "| LoRA | mode | ms/step | vs base |", "|---|---|---|---|"]
    for row in results:
        base = row["step_ms"]["base"]
        for mode, ms in row["step_ms"].items():
            lines.append(f"| {row['lora']} | {mode} | {ms:.2f} | {ms / base - 1:+.1%} |")
    lines += ["", "| LoRA | RSS, base loaded | RSS, + 4 adapters | growth | the 4 adapters' bytes |",
              "|---|---|---|---|---|"]
    for row in results:
        lines.append(f"| {row['lora']} | {row['rss_base_mb']:.0f} MB | {row['rss_four_adapters_mb']:.0f} MB | "
                     f"{row['rss_four_adapters_mb'] - row['rss_base_mb']:+.0f} MB | {row['adapters_mb']:.1f} MB |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
