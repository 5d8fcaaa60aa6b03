"""Preflight: what a training run would do, shown before it starts, so surprises come first.

Data facts come from `core.data.data_preflight`; this adds the adapter's trainable parameters and
estimates of peak memory and seconds per step on this machine. The estimates are rough on purpose:
    time   = 4 x (linear-layer parameters, the LM head only on trained tokens) FLOPs per token (forward + input gradients; frozen W gets no
             weight gradient) / (measured matmul speed x efficiency seen in our benchmarks)
    memory = weights + 16 bytes per trainable parameter (value, gradient, two Adam moments)
             + activations kept for the backward pass (about 20 hidden + 4 intermediate floats per token per layer)
"""

import os
import time
from dataclasses import asdict, dataclass

import torch

from core.adapters import add_adapter, delete_adapter
from core.data import DataPreflight, data_preflight
from core.models import load_base_model
from core.train import lora_settings, planned_steps
from core.train_config import TrainConfig

TRAINING_EFFICIENCY = 0.5  # share of the matmul peak our LoRA training loop reaches on CPU (bench/)


@dataclass
class Preflight:
    data: DataPreflight
    model: dict
    trainable_parameters: int
    trainable_percent: float
    total_steps: int
    tokens_per_step: float
    estimated_seconds_per_step: float
    estimated_minutes: float
    estimated_peak_memory_mb: float
    machine_memory_mb: float


def preflight(config: TrainConfig) -> Preflight:
    """Validate data and settings as `train` would (without training) and estimate the cost."""
    config.check()
    loaded = load_base_model(config.base, config.dtype, config.quant, config.device)
    data = data_preflight(config.dataset, loaded.tokenizer, config.max_len, config.train_on,
                          skip_invalid=config.skip_invalid)
    report = add_adapter(loaded.model, "preflight", lora_settings(config))
    delete_adapter(loaded.model, "preflight")
    head = loaded.model.get_output_embeddings()
    linear = sum(m.in_features * m.out_features for m in loaded.model.modules() if hasattr(m, "in_features"))
    linear -= head.in_features * head.out_features * (1 - data.trained_token_share)  # head runs on trained tokens only
    mean_tokens = data.tokens / max(data.rows - data.invalid_rows, 1)
    tokens_per_step = mean_tokens * config.batch_size * config.grad_accum
    steps = planned_steps(config, data.rows - data.invalid_rows)
    seconds = 4 * linear * tokens_per_step / (matmul_flops(loaded.model.device) * TRAINING_EFFICIENCY)
    settings = loaded.model.config
    layers = getattr(settings, "num_hidden_layers", 1)
    per_token = 4 * layers * (20 * settings.hidden_size + 4 * getattr(settings, "intermediate_size", 0))
    memory = loaded.facts.weight_bytes + 16 * report.trainable + per_token * mean_tokens * config.batch_size
    return Preflight(
        data=data,
        model=asdict(loaded.facts),
        trainable_parameters=report.trainable,
        trainable_percent=report.trainable_percent,
        total_steps=steps,
        tokens_per_step=tokens_per_step,
        estimated_seconds_per_step=seconds,
        estimated_minutes=seconds * steps / 60,
        estimated_peak_memory_mb=memory / 2**20 + _runtime_overhead_mb(),
        machine_memory_mb=_machine_memory_mb(loaded.model.device),
    )


def matmul_flops(device: torch.device, size: int = 1024, repeats: int = 8) -> float:
    """This machine's fp32 (CPU) or bf16 (CUDA) matmul speed in FLOP/s, measured in about a tenth of a second."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _runtime_overhead_mb() -> float:
    """Python, torch and transformers themselves, before any model (measured: about 400 MB)."""
    return 400.0


def _machine_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
