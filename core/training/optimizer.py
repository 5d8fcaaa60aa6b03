"""The optimizer and its learning-rate schedule: AdamW (or bitsandbytes' on CUDA), warm-up then decay, and how
many steps a run plans. Pure functions of the config and the step, so a resumed run continues the same curve."""

import math

import torch

from core.errors import LoraForgeError
from core.training.config import TrainConfig


class TrainingError(LoraForgeError):
    """Training stopped on a problem the user can act on (NaN loss, out of memory...)."""


def build_optimizer(config: TrainConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW; bitsandbytes' 8-bit or paged AdamW on request (they need CUDA).

    Plain AdamW runs fused (one kernel for every parameter) on the CPU and CUDA: a LoRA model has hundreds of
    small tensors, and the per-tensor loop cost ~3% of a CPU step."""
    if config.optimizer == "adamw":
        fused = all(p.device.type in ("cpu", "cuda") for p in parameters)
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
    if not torch.cuda.is_available():
        raise TrainingError(f"optimizer {config.optimizer} needs a CUDA GPU; use --optimizer adamw on this machine.")
    import bitsandbytes as bnb

    kind = bnb.optim.AdamW8bit if config.optimizer == "adamw8bit" else bnb.optim.PagedAdamW
    return kind(parameters, lr=config.lr, weight_decay=config.weight_decay)


def planned_steps(config: TrainConfig, examples: int) -> int:
    """Optimizer steps of a run: max_steps, or epochs over `examples` in batches of batch_size x grad_accum."""
    if config.max_steps is not None:
        return config.max_steps
    per_epoch = math.ceil(examples / config.batch_size) / config.grad_accum
    return max(1, math.ceil(per_epoch * config.epochs))


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up, then cosine, linear or constant decay; a pure function of the step (resume-safe)."""
    warmup = math.ceil(config.warmup_ratio * total_steps)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "linear":
        return config.lr * (1 - progress)
    return config.lr
