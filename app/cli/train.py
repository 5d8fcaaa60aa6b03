"""`launch.py train` and `launch.py resume`: run training in this terminal with a progress bar.

The last line of stdout is one JSON object (run_id, run_dir, adapter_dir, steps, losses, tokens,
tokens_per_s, peak_mem_mb, skipped_rows), so scripts can read the outcome without parsing the progress output.
Flags override `--config run.yaml`, which overrides the defaults.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from core import jobs
from core.data.read import check_source
from core.jobs.ranks import other_node
from core.jobs.runs import absolute_paths, execute_run, record_run, report_outcome
from core.models.loading import load_tokenizer
from core.store.database import Store
from core.training.config import TrainConfig
from core.training.events import event_line, timestamped
from core.training.launcher import Nodes, RanksFailed
from core.training.run_folder import RunFolder

# flag -> (TrainConfig field, type, help)
FLAGS = {
    "--base": ("base", str, "base model: 'default', a Hugging Face folder, a .gguf file or a hub id"),
    "--dataset": ("dataset", str, "training data: JSONL, JSON, CSV or Parquet"),
    "--eval-file": ("eval_file", str, "evaluation data (default: hold out --eval-share of --dataset)"),
    "--eval-share": ("eval_share", float, "share of the dataset held out for evaluation when no --eval-file"),
    "--name": ("name", str, "a name for the run"),
    "--method": ("method", str, "sft (answers), or dpo / orpo on a preference dataset (prompt, chosen, rejected)"),
    "--beta": ("beta", float, "DPO: how far the adapter may move from the base (0.1 is usual)"),
    "--orpo-lambda": ("orpo_lambda", float, "ORPO: weight of the odds-ratio term (0.1 is usual)"),
    "--rank": ("rank", int, "LoRA rank r"),
    "--alpha": ("alpha", float, "LoRA alpha (scaling = alpha / r)"),
    "--dropout": ("dropout", float, "dropout on the LoRA input"),
    "--targets": ("targets", str, "qv, attention, mlp, all-linear, names separated by commas, or a regex"),
    "--quant": ("quant", str, "base weights: none, nf4 (QLoRA) or int8"),
    "--dtype": ("dtype", str, "auto, fp32, bf16 or fp16"),
    "--device": ("device", str, "auto, cpu, cuda or cuda:N"),
    "--epochs": ("epochs", float, "passes over the data"),
    "--max-steps": ("max_steps", int, "optimizer steps (overrides --epochs)"),
    "--batch-size": ("batch_size", int, "examples per micro-batch"),
    "--grad-accum": ("grad_accum", int, "micro-batches per optimizer step"),
    "--lr": ("lr", float, "peak learning rate"),
    "--schedule": ("schedule", str, "cosine, linear or constant (after warm-up)"),
    "--warmup-ratio": ("warmup_ratio", float, "share of steps spent warming up"),
    "--optimizer": ("optimizer", str, "adamw, adamw8bit or paged_adamw (the last two need CUDA)"),
    "--max-len": ("max_len", int, "tokens per example; longer examples are cut (and counted)"),
    "--train-on": ("train_on", str, "assistant (answers only) or all"),
    "--save-every": ("save_every", int, "steps between checkpoints"),
    "--eval-every": ("eval_every", int, "steps between evaluations"),
    "--seed": ("seed", int, "random seed"),
    "--nproc": ("nproc", int, "processes training together on this machine: one per GPU, or a few on a CPU"),
    "--strategy": ("strategy", str, "with --nproc: ddp (each process holds the whole base) or fsdp (base sharded)"),
}
# Where the processes of a multi-node run meet (torchrun's options); not part of the run's config.
NODE_FLAGS = {
    "--nnodes": (int, "machines training together (each runs this command with its own --node-rank)"),
    "--node-rank": (int, "this machine's number, 0 to nnodes - 1; node 0 records the run"),
    "--rdzv-endpoint": (str, "node 0's host:port, where the machines meet (the same on every machine)"),
}
BACKGROUND_HELP = "queue it for the background supervisor and print the run id at once (survives closing the terminal)"
SWITCHES = {
    "--skip-invalid": ("skip_invalid", True, "drop invalid rows instead of refusing the dataset"),
    "--no-packing": ("packing", False, "pad batches instead of packing examples into one row"),
    "--gradient-checkpointing": ("gradient_checkpointing", True, "trade compute for memory"),
    "--rslora": ("use_rslora", True, "scale by alpha / sqrt(r)"),
    "--dora": ("use_dora", True, "weight-decomposed LoRA (DoRA)"),
}


def register(verbs) -> None:
    parser = verbs.add_parser("train", help="train an adapter", argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="a run.yaml (as written into every run folder); flags override it")
    add_training_flags(parser)
    add_node_flags(parser)
    parser.add_argument("--background", action="store_true", help=BACKGROUND_HELP)
    parser.set_defaults(handler=run_train)

    resume = verbs.add_parser("resume", help="continue a run from its newest checkpoint",
                              argument_default=argparse.SUPPRESS)
    resume.add_argument("run_id")
    resume.add_argument("--nproc", type=int, help="continue with another number of processes (the same adapter)")
    add_node_flags(resume)
    resume.add_argument("--background", action="store_true", help=BACKGROUND_HELP)
    resume.set_defaults(handler=run_resume)


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    for flag, (_, kind, text) in FLAGS.items():
        parser.add_argument(flag, type=kind, help=text)
    for flag, (_, value, text) in SWITCHES.items():
        parser.add_argument(flag, action="store_const", const=value, help=text)


def add_node_flags(parser: argparse.ArgumentParser) -> None:
    for flag, (kind, text) in NODE_FLAGS.items():
        parser.add_argument(flag, type=kind, help=text)


def nodes_from_args(args: argparse.Namespace) -> Nodes:
    return Nodes(getattr(args, "nnodes", 1), getattr(args, "node_rank", 0), getattr(args, "rdzv_endpoint", None))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = TrainConfig.from_yaml(args.config).__dict__ if getattr(args, "config", None) else {}
    for flag, (field, *_) in {**FLAGS, **SWITCHES}.items():
        given = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if given is not None:
            values[field] = given
    if isinstance(values.get("targets"), str) and "," in values["targets"]:
        values["targets"] = [name.strip() for name in values["targets"].split(",") if name.strip()]
    return TrainConfig.from_dict(values)  # checked where it is used: record_run, preflight


def run_train(args: argparse.Namespace) -> int:
    config, nodes = config_from_args(args).check(), nodes_from_args(args).check()
    if nodes.rank > 0:  # node 0 records the run; this machine's ranks only train beside its own
        return other_node(absolute_paths(config), nodes)
    for source in (config.dataset, config.eval_file):  # a typo is refused before the model loads (seconds)
        if source:
            check_source(source)
    tokenizer = load_tokenizer(config.base)  # renders the rows as the run will, so none is left empty after the fact
    if getattr(args, "background", False):
        if nodes.count > 1:
            raise RanksFailed("A multi-node run trains in the terminal of each machine; leave out --background.")
        with Store() as store:
            return print_queued(jobs.submit(store, config, tokenizer=tokenizer))
    with Store() as store:
        run_id, data = record_run(store, config, status="running", tokenizer=tokenizer)
        folder = RunFolder(store.get_run(run_id)["run_dir"])
        print(f"Run {run_id}: {folder.path}", file=sys.stderr)
        result = execute_run(store, run_id, events=ProgressBar(folder.job_log), data=data, nodes=nodes)
        return report_outcome(store, run_id, result)


def run_resume(args: argparse.Namespace) -> int:
    nodes, nproc = nodes_from_args(args).check(), getattr(args, "nproc", None)
    with Store() as store:
        if getattr(args, "background", False):
            return print_queued(jobs.resume_in_background(store, args.run_id, nproc=nproc)["id"])
        folder = RunFolder(jobs.resumable_run(store, args.run_id)["run_dir"])
        if nproc is not None:
            folder.write_config(dataclasses.replace(folder.read_config(), nproc=nproc).check())
        result = execute_run(store, args.run_id, events=ProgressBar(folder.job_log), nodes=nodes)
        return report_outcome(store, args.run_id, result)


def print_queued(run_id: str) -> int:
    """The run id as the last stdout line, JSON like every verb's outcome; the supervisor takes it from here."""
    print(f"Run {run_id} queued; follow it with `python launch.py runs`.", file=sys.stderr)
    print(json.dumps({"run_id": run_id}))
    return 0


class ProgressBar:
    """Training progress on stderr: a live bar in a terminal, a line every few steps in a log; the other events
    as lines (`event_line`). Every line also goes to the run's job.log, so the Runs tab shows a run started in a
    terminal as it shows a background one."""

    def __init__(self, log: Path) -> None:
        self.bar = None
        self.log = log

    def __call__(self, kind: str, payload: dict) -> None:
        from tqdm import tqdm

        if line := event_line(kind, payload):
            try:
                with open(self.log, "a") as handle:
                    handle.write(timestamped(line) + "\n")
            except OSError:  # a log the page cannot show is no reason to stop the training
                pass
        if kind == "metrics" and payload["split"] == "train":
            if self.bar is None:
                self.bar = tqdm(total=payload["total_steps"], initial=payload["step"] - 1, unit="step",
                                file=sys.stderr, dynamic_ncols=True, mininterval=1 if sys.stderr.isatty() else 10)
            self.bar.set_postfix(loss=f"{payload['loss']:.3f}", tok_s=f"{payload['tokens_per_s']:.0f}", refresh=False)
            self.bar.update(1)
            if payload["step"] == payload["total_steps"]:
                self.bar.close()
        elif kind != "checkpoint" and (line := event_line(kind, payload)):  # the bar's saves would only be noise
            print(f"\n{line}", file=sys.stderr)
