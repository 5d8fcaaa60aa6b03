"""Helpers shared by the LoRA tests: loading tiny models, non-zero adapter weights, fixed inputs."""

import torch
from transformers import AutoModelForCausalLM

from core.lora.model import adapter_modules

TOKENS = torch.tensor([[1, 17, 42, 99, 7, 230, 5, 64], [3, 8, 120, 77, 19, 2, 250, 11]])


def load(folder, dtype=torch.float32):
    """A fresh tiny model in eval mode (dropout off), so outputs are deterministic."""
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def logits(model, tokens=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


@torch.no_grad()
def randomize(model, name: str, seed: int = 0, std: float = 0.2) -> None:
    """Give adapter `name` non-zero A, B (and DoRA magnitudes off the init) so it really changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    for adapter in adapter_modules(model, name).values():
        for param in adapter.parameters():
            noise = torch.randn(param.shape, generator=generator) * std
            param.copy_(param + noise if param.ndim == 1 else noise)


def state_snapshot(model) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def assert_same_state(before: dict[str, torch.Tensor], model) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, equal_nan=True, msg=key)
