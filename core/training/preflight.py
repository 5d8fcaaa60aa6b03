"""Preflight: what a training run would do, shown before it starts, so surprises come first.

Data facts come from `core.data.data_preflight`; this adds the adapter's trainable parameters and
estimates of peak memory and seconds per step on this machine. The estimates are rough on purpose:
    time   = 4 x (linear-layer parameters, the LM head only on trained tokens) FLOPs per token (forward + input
             gradients; frozen W gets no weight gradient) / (measured matmul speed x efficiency seen in our benchmarks),
             for the tokens a step computes (shared openings once: core.data.prefixes); 6 x for DPO, whose reference
             pass is one more forward; a preference pair is two examples (its chosen and its rejected answer)
    memory = weights (in the run's dtype, linear layers in nf4/int8 when quantized)
             + 16 bytes per trainable parameter (value, gradient, two Adam moments)
             + activations kept for the backward pass (about 20 hidden + 4 intermediate values per token per layer;
               with gradient checkpointing one hidden vector per layer plus one layer's worth)
             + fp32 logits, their softmax and gradient for the trained tokens
             + the Python/torch runtime,
    for the largest micro-batch we expect: batch_size examples of the 95th-percentile length (at most max_len).
With several processes (nproc) the figures are per process: each takes its share of a micro-batch's examples, and
holds the whole base (ddp) or a 1/nproc share of its decoder layers (fsdp); on a CPU the processes share the RAM.
Every figure is computed from the already-loaded model without changing it, so the web page can show it live.
"""

import functools
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from core.data import DataPreflight, data_preflight
from core.lora.targets import resolve_targets
from core.models.base_weights import layer_shape
from core.models.devices import resolve_device, resolve_dtype, training_dtype
from core.models.loading import LoadedModel, load_base_model, resolve_source
from core.models.quantize import SKIPPED_MODULES
from core.training.config import ConfigError, TrainConfig
from core.training.data_plan import batch_settings, train_examples
from core.training.optimizer import planned_steps

TRAINING_EFFICIENCY = 0.5  # share of the matmul peak our LoRA training loop reaches (bench/)
# A bf16 base on a CPU with bf16 products: those run about 4x as fast as fp32's, the rest of a step does not
CPU_BF16_EFFICIENCY = 0.25
QUANTIZED_BYTES = {"nf4": 4.127 / 8, "int8": 1.0}  # per weight: NF4 with double-quantized scales; int8 + row scales
RUNTIME_MB = 400.0  # Python, torch and transformers themselves, before any model (measured: about 400 MB)
MB = 2**20


@dataclass
class MemoryEstimate:
    """Estimated peak memory of a run by part, and what its device has."""

    device: str
    weights_mb: float
    adapter_mb: float  # trainable parameters with their gradients and optimizer moments
    activations_mb: float
    logits_mb: float
    runtime_mb: float
    available_mb: float  # free now (another process's model already counted out)
    device_total_mb: float
    processes: int = 1  # training processes sharing this device (all of them on a CPU, one per GPU)

    @property
    def peak_mb(self) -> float:
        """One process's peak."""
        return self.weights_mb + self.adapter_mb + self.activations_mb + self.logits_mb + self.runtime_mb

    @property
    def device_peak_mb(self) -> float:
        return self.peak_mb * self.processes

    @property
    def fits(self) -> bool:
        return self.device_peak_mb <= self.available_mb


@dataclass
class Preflight:
    data: DataPreflight
    model: dict
    trainable_parameters: int
    trainable_percent: float
    total_steps: int
    tokens_per_step: float
    estimated_seconds_per_step: float | None  # None when not timed (see preflight_on)
    estimated_minutes: float | None
    estimated_peak_memory_mb: float
    machine_memory_mb: float
    memory: MemoryEstimate


def preflight(config: TrainConfig) -> Preflight:
    """Validate data and settings as `train` would (without training) and estimate the cost on the run's base."""
    config.check()
    dtype = training_dtype(config.dtype, config.quant, config.device)
    return preflight_on(load_base_model(config.base, dtype, config.quant, config.device), config)


def preflight_on(loaded: LoadedModel, config: TrainConfig, timed: bool = True) -> Preflight:
    """The preflight of `config` against a model already loaded, which is not changed (the web page asks this of
    the model it serves at every change of a setting). `timed=False` leaves the time estimate out: the page's
    model may not be the run's base, and a run that would not start needs none."""
    config.check()
    data = data_preflight(config.dataset, loaded.tokenizer, config.max_len, config.train_on,
                          skip_invalid=config.skip_invalid, batches=batch_settings(config, loaded.model),
                          preference=config.method != "sft")
    trainable = count_trainable(loaded.model, config)
    check_adapter_size(trainable, loaded.facts.parameters, config)
    steps = planned_steps(config, train_examples(config, data.rows - data.invalid_rows))
    seconds = estimate_seconds_per_step(loaded.model, config, data) if timed else None
    memory = estimate_memory(loaded, config, data, trainable)
    check_fits(memory, config)
    return Preflight(
        data=data,
        model=asdict(loaded.facts),
        trainable_parameters=trainable,
        trainable_percent=100 * trainable / loaded.facts.parameters if loaded.facts.parameters else 0.0,
        total_steps=steps,
        tokens_per_step=mean_tokens_per_step(config, data),
        estimated_seconds_per_step=seconds,
        estimated_minutes=None if seconds is None else seconds * steps / 60,
        estimated_peak_memory_mb=memory.device_peak_mb,
        machine_memory_mb=memory.device_total_mb,
        memory=memory,
    )


def mean_tokens_per_step(config: TrainConfig, data: DataPreflight) -> float:
    """The examples' tokens in an average optimizer step (all micro-batches)."""
    return data.tokens / max(data.rows - data.invalid_rows, 1) * config.batch_size * config.grad_accum


def estimate_seconds_per_step(model: nn.Module, config: TrainConfig, data: DataPreflight) -> float:
    """Seconds per optimizer step on this machine, by the rough model in this module's docstring. The machine's
    matmul speed is measured once per device and process: the web page asks again at every change of a setting."""
    head = model.get_output_embeddings()
    linear = sum(m.in_features * m.out_features for m in model.modules() if hasattr(m, "in_features"))
    linear -= head.in_features * head.out_features * (1 - data.trained_token_share)  # head runs on trained tokens only
    computed_tokens = mean_tokens_per_step(config, data) * (1 - data.shared_token_share)
    dtype = resolve_dtype(training_dtype(config.dtype, config.quant, config.device), model.device)
    reference = 2 if config.method == "dpo" else 0  # DPO's reference pass: a forward without the adapter
    return (4 + reference) * linear * computed_tokens / _training_flops(model.device, dtype)


def _training_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s our loop reaches: a share of the matmul peak in the dtype its products run in (bf16 on CUDA, where
    training autocasts to it)."""
    if device.type == "cuda":
        return _device_matmul_flops(device, torch.bfloat16) * TRAINING_EFFICIENCY
    if dtype is torch.bfloat16:
        return _device_matmul_flops(device, torch.bfloat16) * CPU_BF16_EFFICIENCY
    return _device_matmul_flops(device, torch.float32) * TRAINING_EFFICIENCY


@functools.cache
def _device_matmul_flops(device: torch.device, dtype: torch.dtype) -> float:
    return matmul_flops(device, dtype)


def count_trainable(model: nn.Module, config: TrainConfig) -> int:
    """r x (d_in + d_out) per targeted layer (+ d_out for DoRA), from the model's shapes: nothing is injected."""
    total = 0
    modules = dict(model.named_modules())
    for path in resolve_targets(model, config.targets):
        module = modules[path]
        d_in, d_out = layer_shape(getattr(module, "base_layer", module))
        total += config.rank * (d_in + d_out) + (d_out if config.use_dora else 0)
    return total


def estimate_memory(loaded: LoadedModel, config: TrainConfig, data: DataPreflight, trainable: int) -> MemoryEstimate:
    """Peak memory of training `config` (see the module docstring), from `loaded` whatever its own dtype and
    quantization: the web page estimates any settings against the one model it serves."""
    device = resolve_device(config.device)
    value_bytes = resolve_dtype(training_dtype(config.dtype, config.quant, config.device), device).itemsize
    facts, settings = loaded.facts, loaded.model.config
    served_bytes = getattr(torch, facts.dtype).itemsize
    other_weights = (facts.weight_bytes - facts.linear_weight_bytes) * value_bytes / served_bytes
    linear_weights = quantizable_weights(loaded.model) * QUANTIZED_BYTES.get(config.quant, value_bytes)
    if config.strategy == "fsdp" and config.nproc > 1:
        linear_weights /= config.nproc  # each process holds its shard of the decoder layers
    answers = 2 if config.method != "sft" else 1  # a preference pair is two examples
    tokens = answers * -(-config.batch_size // config.nproc) * min(data.length_p95, config.max_len)  # largest share
    layers, hidden = getattr(settings, "num_hidden_layers", 1), settings.hidden_size
    one_layer = 20 * hidden + 4 * getattr(settings, "intermediate_size", 0)
    kept = layers * hidden + one_layer if config.gradient_checkpointing else layers * one_layer
    trained = tokens * (data.trained_token_share if data.tokens else 1.0)
    available, total = machine_memory_mb(device)
    return MemoryEstimate(
        device=str(device),
        weights_mb=(other_weights + linear_weights) / MB,
        adapter_mb=16 * trainable / MB,
        activations_mb=value_bytes * kept * tokens / MB,
        logits_mb=12 * trained * settings.vocab_size / MB,
        runtime_mb=RUNTIME_MB,
        available_mb=available,
        device_total_mb=total,
        processes=1 if device.type == "cuda" else config.nproc,
    )


def check_fits(memory: MemoryEstimate, config: TrainConfig) -> None:
    """Refuse a plan of several processes that will not fit their devices (ConfigError with the fixes): N processes
    that run out of memory one after another cost N model loads to find out."""
    if config.nproc > 1 and not memory.fits:
        where = (f"{config.nproc} processes of {memory.peak_mb:,.0f} MB each" if memory.processes > 1
                 else f"{memory.peak_mb:,.0f} MB per GPU")
        raise ConfigError(f"This plan needs about {where}, more than the {memory.available_mb:,.0f} MB available on "
                          f"{memory.device}. Use fewer processes (--nproc), --strategy fsdp to shard the base, a "
                          "smaller --batch-size or --max-len, or --quant nf4.")


def quantizable_weights(model: nn.Module) -> int:
    """Weights of the linear layers that nf4/int8 would quantize (all but the LM head), counted unpacked."""
    return sum(module.in_features * module.out_features for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in SKIPPED_MODULES)


def machine_memory_mb(device: torch.device) -> tuple[float, float]:
    """(available now, total) memory of `device` in MB: the GPU's, or this machine's RAM."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return free / MB, total / MB
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():  # Linux: MemAvailable counts reclaimable caches, unlike free pages
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024, total
    return total, total


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 1024, repeats: int = 8) -> float:
    """This machine's matmul speed in `dtype` in FLOP/s, measured in about a tenth of a second."""
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


def check_targets(config: TrainConfig) -> None:
    """Refuse a base that cannot be found, or targets that match none of its layers, before a run is recorded
    (AdapterConfigError naming the layers it has). The weights are not loaded for this: the model is built on
    the meta device from its config, so a typo costs a second rather than a model load and a failed run. An
    architecture that cannot be built that way is left for the real load to judge."""
    folder, _, _ = resolve_source(config.base)
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    except Exception:  # noqa: BLE001 - remote code, a quantization marker...: the real load reports those
        return
    resolve_targets(skeleton, config.targets)
    check_adapter_size(count_trainable(skeleton, config), sum(p.numel() for p in skeleton.parameters()), config)


def check_adapter_size(trainable: int, parameters: int, config: TrainConfig) -> None:
    """Refuse an adapter with more trainable parameters than its whole base: LoRA's point is a small update, and
    such a rank is a typo (rank 100000 on a 135 M model made a 5.76 B-parameter adapter)."""
    if parameters and trainable > parameters:
        raise ConfigError(f"rank {config.rank} on these targets makes {trainable:,} trainable parameters, more than "
                          f"the whole base model's {parameters:,}. Use a rank of 8 to 64.")
