"""The training loop: a dataset and a base model in, a PEFT-format adapter out. Read it top to bottom.

    load base -> prepare data (refuse bad rows) -> per-example attention for packed rows -> inject LoRA
    -> [resume from newest checkpoint]  -> a fresh start evaluates the base first (step 0)
    -> for each optimizer step: grad_accum micro-batches -> clip -> AdamW -> metrics
       every eval_every: eval loss;  every save_every: samples + atomic checkpoint
    -> final adapter (PEFT format) in run_dir/adapter

Everything a run writes lives in its run folder; `events` (optional) hears about metrics, samples and
checkpoints so a store can record them too. Resume is exact on CPU: optimizer, random states and the
data position are restored, and the learning rate is a pure function of the step.

Run by several processes (torchrun, core/training/distributed.py), each trains its share of every global batch
and rank 0 alone writes; they train the adapter that one process would.
"""

import dataclasses
import json
import math
import resource
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from core.data import BatchSettings, DataPosition
from core.lora.model import LoraSettings, add_adapter
from core.lora.peft_format import save_adapter
from core.models.devices import training_dtype
from core.models.loading import LoadedModel, load_base_model
from core.models.packed_attention import use_packed_attention
from core.models.quantize import keep_4bit_layout_for_training
from core.training.allocator import keep_freed_memory
from core.training.checkpoint import (
    load_checkpoint,
    newest_checkpoint,
    restore_rng_states,
    resume_step,
    rng_states,
    save_checkpoint,
)
from core.training.config import TrainConfig
from core.training.data_plan import (
    TrainingData,
    attends_per_example,
    batch_settings,
    load_training_data,
    sample_outputs,
)
from core.training.distributed import Replicas, World, current_world, shared_checkpoint
from core.training.loss import trained_token_loss
from core.training.optimizer import TrainingError, build_optimizer, learning_rate, planned_steps
from core.training.run_folder import RunFolder, append_row
from core.training.stop import StepAbandoned, StopFlag

ADAPTER = "default"
Events = Callable[[str, dict], None]


@dataclass
class TrainResult:
    run_dir: str
    adapter_dir: str | None
    status: str  # "completed", or "interrupted" when stopped by a signal (resumable)
    steps: int
    total_steps: int
    train_loss: float | None
    eval_loss: float | None
    tokens: int  # non-padding tokens processed by training
    tokens_per_s: float  # over the training loop's wall time, model loading excluded
    peak_mem_mb: float
    trainable_parameters: int
    skipped_rows: int  # invalid rows left out (skip_invalid), listed in the run folder's skipped_rows.txt


def train(config: TrainConfig, run_dir: Path, resume: bool = False, events: Events | None = None,
          data: TrainingData | None = None) -> TrainResult:
    """Train (or resume) the run in `run_dir`; see the module docstring for the path it takes. `data` is the
    run's data when the caller has checked the config and rendered it already (core.jobs.runs.record_run), so
    a run started in this process reads its dataset once.

    On CUDA out-of-memory it retries once, from the newest checkpoint, with half the micro-batch and twice
    the accumulation: the same effective batch, so the run continues as it would have.
    """
    keep_freed_memory()  # activations reuse freed heap memory instead of faulting in fresh pages every step
    try:
        return _train_once(config, run_dir, resume, events, data)
    except torch.cuda.OutOfMemoryError:
        if config.batch_size % 2 or current_world().size > 1:  # ranks cannot retry in step with each other
            raise _out_of_memory(config) from None
    _free_accelerator_memory()  # outside the except block, so the failed attempt's tensors can be freed
    smaller = dataclasses.replace(config, batch_size=config.batch_size // 2, grad_accum=config.grad_accum * 2)
    (events or _ignore)("oom_retry", {"batch_size": smaller.batch_size, "grad_accum": smaller.grad_accum})
    try:
        return _train_once(smaller, run_dir, True, events, data)
    except torch.cuda.OutOfMemoryError:
        raise _out_of_memory(smaller) from None


@dataclass
class _Session:
    """Everything a run holds while it trains."""

    config: TrainConfig
    folder: RunFolder
    loaded: LoadedModel
    data: TrainingData
    trainable: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    batch_settings: BatchSettings
    total_steps: int
    trainable_parameters: int
    skipped_rows: int
    world: World
    replicas: Replicas

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model


def _train_once(config: TrainConfig, run_dir: Path, resume: bool, events: Events | None,
                data: TrainingData | None) -> TrainResult:
    emit = events or _ignore
    run = _prepare(config, RunFolder(run_dir), data)
    if run.skipped_rows:
        emit("skipped", {"rows": run.skipped_rows, "file": str(run.folder.skipped_rows)})
    step, position, tokens, elapsed, last_eval, train_loss = 0, DataPosition(), 0, 0.0, None, None
    world = run.world
    with shared_checkpoint(world, newest_checkpoint(run.folder.path) if resume else None) as checkpoint:
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, run.model, run.optimizer)
            step, position = state["step"], _same_examples_position(state, config.batch_size)
            tokens, elapsed, last_eval = state["tokens"], state["elapsed"], state.get("eval_loss")
            emit("resumed", {"step": step, "checkpoint": str(checkpoint)})

    batches = run.data.batches(run.batch_settings, start=position, share=world.share)
    stop, stopping = StopFlag(abandon=world.size == 1), False
    if world.writer:
        run.folder.forget_rows_after(step if step else -1)  # a fresh start logs its step-0 evaluation again
    metrics_file = open(run.folder.metrics, "a") if world.writer else None

    def checkpoint_state() -> dict:
        return dict(position=asdict(position), batch_size=config.batch_size, tokens=tokens, elapsed=elapsed,
                    eval_loss=last_eval, train_loss=train_loss, total_steps=run.total_steps)

    try:
        if step == 0:  # where the run starts (B is zero: the base's own loss), so the eval curve has an origin;
            _evaluate(run, 0, stop, metrics_file, emit, None)  # not the run's eval loss, which is the adapter's
        run.model.train()
        while step < run.total_steps and not stopping:
            started = time.perf_counter()
            window = [next(batches) for _ in range(config.grad_accum)]
            random_state = rng_states()
            try:
                train_loss, grad_norm, rate, measured = _optimizer_step(run, window, step, stop)
            except StepAbandoned:  # nothing of the step was applied: checkpoint the last finished one
                run.optimizer.zero_grad(set_to_none=True)
                restore_rng_states(random_state)
                if step and step != resume_step(run.folder.path):
                    _save(run, step, checkpoint_state(), emit, samples=False)
                break
            step, position = step + 1, window[-1].next_position
            step_tokens = int(world.total(sum(batch.tokens for batch in window))[0])
            seconds = time.perf_counter() - started
            tokens, elapsed = tokens + step_tokens, elapsed + seconds
            memory = peak_memory_mb(run.model.device)
            _log(metrics_file, emit, dict(
                step=step, split="train", loss=train_loss, lr=rate, grad_norm=grad_norm, tokens=tokens,
                tokens_per_s=step_tokens / seconds, memory_mb=memory, time=time.time(),
                epoch=position.epoch, total_steps=run.total_steps, **measured, **run.replicas.figures(memory)))
            stopping = world.total(stop.requested)[0] > 0  # every rank stops after the same step

            final = step == run.total_steps
            if step % config.eval_every == 0 or final:
                last_eval = _evaluate(run, step, stop, metrics_file, emit, last_eval)
            if step % config.save_every == 0 or final or stopping:
                _save(run, step, checkpoint_state(), emit, samples=not stopping)
    finally:
        if metrics_file:
            metrics_file.close()
        stop.restore()
    return _finish(run, step, train_loss, last_eval, tokens, elapsed)


def _prepare(config: TrainConfig, folder: RunFolder, data: TrainingData | None) -> _Session:
    """Load the base, validate and render the data (unless given), inject the adapter, build the optimizer."""
    if data is None:
        config.check()
    world = current_world()
    if world.writer:
        folder.write_config(config)
    torch.manual_seed(config.seed)
    dtype = training_dtype(config.dtype, config.quant, config.device)
    loaded = load_base_model(config.base, dtype, config.quant, config.device)
    keep_4bit_layout_for_training(loaded.model)
    data = load_training_data(config, loaded.tokenizer) if data is None else data
    if attends_per_example(config, loaded.model):
        use_packed_attention(loaded.model)
    report = add_adapter(loaded.model, ADAPTER, lora_settings(config))
    if config.gradient_checkpointing:
        enable_checkpointing(loaded.model)
    trainable = [p for p in loaded.model.parameters() if p.requires_grad]
    return _Session(
        config=config,
        folder=folder,
        loaded=loaded,
        data=data,
        trainable=trainable,
        optimizer=build_optimizer(config, trainable),
        batch_settings=batch_settings(config, loaded.model),
        total_steps=planned_steps(config, len(data.train.examples)),
        trainable_parameters=report.trainable,
        skipped_rows=data.record_skipped_rows(folder) if world.writer else 0,
        world=world,
        replicas=Replicas(loaded.model, world, config.strategy, static_graph=config.gradient_checkpointing),
    )


def _optimizer_step(run: _Session, window: list, step: int, stop: StopFlag) -> tuple[float, float, float, dict]:
    """Accumulate gradients over the window's micro-batches, clip, and step; return loss, grad norm, lr and the
    objective's own metrics (preference runs: rewards, margin, accuracy).

    Each micro-batch's summed loss is divided by the trained tokens (preference runs: pairs) of the whole window
    on every rank, so every trained token weighs the same however the window is split (which keeps the
    out-of-memory retry and an N-process run exact). A stop request during the forward and backward passes
    abandons the step (`StepAbandoned`); the update itself is never cut short."""
    model, replicas = run.model, run.replicas
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if model.device.type == "cuda" else nullcontext()
    trained = max(int(run.world.total(sum(run.data.weight(batch) for batch in window))[0]), 1)  # of every rank
    loss_sum, measured = 0.0, {}
    with stop.abandonable(), replicas.own_randomness(run.config.seed, step):
        for index, batch in enumerate(window):
            with replicas.syncing(last=index == len(window) - 1):
                with autocast:
                    loss, metrics = _batch_loss(run, batch)
                (loss / trained).backward()
            loss_sum += loss.item()
            for name, value in metrics.items():
                measured[name] = measured.get(name, 0.0) + value / trained
    train_loss, *summed = run.world.total(loss_sum, *measured.values())
    train_loss, measured = train_loss / trained, dict(zip(measured, summed))
    if not math.isfinite(train_loss):
        raise TrainingError(
            f"The loss became {train_loss} at step {step + 1}, so training stopped. The last good checkpoint "
            "is kept. Lower the learning rate (e.g. halve --lr), keep gradient clipping on, and resume or restart."
        )
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.trainable, run.config.max_grad_norm))
    rate = learning_rate(run.config, step, run.total_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = rate
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return train_loss, grad_norm, rate, measured


def _batch_loss(run: _Session, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """SFT: the summed cross-entropy of the trained tokens; DPO and ORPO: the summed pair losses and metrics."""
    if run.config.method == "sft":
        return trained_token_loss(run.model, batch.model_inputs(run.model.device), run.replicas.decoder)[0], {}
    return run.data.objective.batch_loss(run.model, batch, run.replicas.decoder)


def _evaluate(run: _Session, step: int, stop: StopFlag, metrics_file, emit: Events, last_eval: float | None
              ) -> float | None:
    """Log the eval scores at `step` and return the loss; a stop cuts the evaluation short and keeps `last_eval`."""
    try:
        with stop.abandonable():
            scores = run.data.eval_scores(run.model, run.batch_settings, run.world)
    except StepAbandoned:  # stopping: the checkpoint that follows matters more than this evaluation
        return last_eval
    if scores is None:
        return last_eval
    _log(metrics_file, emit, dict(step=step, split="eval", **scores, time=time.time()))
    return scores["loss"]


def _save(run: _Session, step: int, state: dict, emit: Events, samples: bool = True) -> None:
    """Sample the fixed prompts (not when stopping: the checkpoint must be written within the stop's grace
    period), then write the checkpoint. Rank 0's job alone, but for a sharded base's samples, which every rank's
    part of the weights takes part in."""
    tokenizer, config = run.loaded.tokenizer, run.config
    samples = samples and (run.world.writer or run.replicas.sharded)
    answers = sample_outputs(run.model, tokenizer, run.data.sample_prompts, config.sample_max_new_tokens) \
        if samples else []
    if not run.world.writer:
        return
    for sample in answers:
        append_row(run.folder.samples, {"step": step, **sample})
        emit("sample", {"step": step, **sample})
    run.model.train()
    saved = save_checkpoint(run.folder.path, step, run.model, ADAPTER, run.optimizer, state, config.keep_checkpoints)
    emit("checkpoint", {"step": step, "path": str(saved)})


def _finish(run: _Session, step: int, train_loss, last_eval, tokens: int, elapsed: float) -> TrainResult:
    """Save the final adapter when every step is done (else the run stopped early and is resumable)."""
    adapter_dir, completed = None, step >= run.total_steps
    if completed and run.world.writer:
        adapter_dir = save_adapter(run.model, ADAPTER, run.folder.adapter,
                                   base_model_name=run.loaded.facts.base_model_id)
    result = TrainResult(
        run_dir=str(run.folder.path),
        adapter_dir=str(adapter_dir) if adapter_dir else None,
        status="completed" if completed else "interrupted",
        steps=step,
        total_steps=run.total_steps,
        train_loss=train_loss,
        eval_loss=last_eval,
        tokens=tokens,
        tokens_per_s=tokens / elapsed if elapsed else 0.0,
        peak_mem_mb=peak_memory_mb(run.model.device),
        trainable_parameters=run.trainable_parameters,
        skipped_rows=run.skipped_rows,
    )
    if run.world.writer:
        run.folder.result.write_text(json.dumps(asdict(result), indent=1))
    return result


def _same_examples_position(state: dict, batch_size: int) -> DataPosition:
    """The checkpoint's data position in batches of `batch_size`: batches are consecutive chunks of one
    shuffled order, so halving the batch size doubles the index and the same examples come next."""
    epoch, index = state["position"]["epoch"], state["position"]["index"]
    return DataPosition(epoch, index * state.get("batch_size", batch_size) // batch_size)


def _out_of_memory(config: TrainConfig) -> TrainingError:
    return TrainingError(
        f"The GPU ran out of memory with --batch-size {config.batch_size}. Lower --batch-size (and raise --grad-accum "
        "to keep the same effective batch), lower --max-len, use --quant nf4, or add --gradient-checkpointing."
    )


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _ignore(kind: str, payload: dict) -> None:
    """The default event listener."""


def lora_settings(config: TrainConfig) -> LoraSettings:
    return LoraSettings(r=config.rank, alpha=config.alpha, dropout=config.dropout, targets=config.targets,
                        use_rslora=config.use_rslora, use_dora=config.use_dora)


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them. transformers 5.24
    renamed the switch (the old name goes in v6); older versions have only the old one."""
    switch = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    switch()
    model.enable_input_require_grads()  # reentrant checkpoints need a layer input that carries a gradient


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory on CUDA; peak resident memory of this process on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _log(handle, emit: Events, row: dict) -> None:
    """Write a metrics row (rank 0 has the file; other ranks, None) and tell `emit`."""
    if handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
    emit("metrics", row)
