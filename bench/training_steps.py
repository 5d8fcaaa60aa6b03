"""One forward and backward pass of LoRA Forge's training step, set up as `core.training.loop` sets it up, for the
benchmarks that time steps in one process (shared_prefix.py, allocator.py)."""

import time
from pathlib import Path

import torch

from core.data import BatchSettings, PreparedDataset, iterate_batches, prepare_dataset
from core.lora.model import add_adapter
from core.models.loading import load_base_model
from core.models.packed_attention import use_packed_attention
from core.training.config import TrainConfig
from core.training.loop import lora_settings
from core.training.loss import trained_token_loss

LORAS = {"r16-all": (16, "all-linear"), "r8-qv": (8, "qv")}


def prepared_model(dataset: Path, lora: str) -> tuple[torch.nn.Module, PreparedDataset, TrainConfig]:
    """The default model in fp32 with a fresh adapter of shape `lora`, in training mode, and the dataset."""
    rank, targets = LORAS[lora]
    config = TrainConfig(dataset=str(dataset), rank=rank, alpha=2 * rank, targets=targets, dtype="fp32")
    loaded = load_base_model("default", dtype="fp32")
    use_packed_attention(loaded.model)
    add_adapter(loaded.model, "bench", lora_settings(config))
    loaded.model.train()
    return loaded.model, prepare_dataset(str(dataset), loaded.tokenizer, max_length=config.max_len), config


def first_batches(data: PreparedDataset, config: TrainConfig, count: int, share_prefix: bool = True) -> list:
    """The epoch's first `count` batches (seed 0), as the training loop would take them."""
    settings = BatchSettings(batch_size=config.batch_size, share_prefix=share_prefix)
    return list(iterate_batches(data.examples, settings, 0, epochs=1))[:count]


def timed_step(model: torch.nn.Module, batch) -> tuple[float, float]:
    """Forward and backward of one batch (no optimizer): seconds, and the loss per trained token.
    The gradients are left on the parameters."""
    started = time.perf_counter()
    loss, _ = trained_token_loss(model, batch.model_inputs())
    (loss / batch.trained_tokens).backward()
    return time.perf_counter() - started, loss.item()
