"""Helpers for the export tests: trained-looking adapters on the tiny Llama, and the live reference."""

import os
from pathlib import Path

import pytest
import torch

from core.export import llamacpp
from core.lora.model import LoraSettings, add_adapter, set_active
from core.lora.peft_format import save_adapter
from core.models.loading import load_base_model
from tests.lora_helpers import randomize


def need_llama_cpp() -> None:
    """In CI a missing llama-cpp-python is a failure (`make test` installs it); elsewhere the test skips."""
    if not llamacpp.available():
        if os.environ.get("CI"):
            pytest.fail("llama-cpp-python is not installed; `make test` installs it with the dev extra")
        pytest.skip("llama-cpp-python is not installed")


def make_adapter(base: str | Path, folder: Path, seed: int = 0, targets: str = "all-linear", std: float = 0.2) -> Path:
    """Save an adapter with random non-zero A and B (a 'trained' one) for the base at `base`."""
    loaded = load_base_model(str(base), dtype="fp32")
    add_adapter(loaded.model, "trained", LoraSettings(r=4, alpha=8, targets=targets))
    randomize(loaded.model, "trained", seed=seed, std=std)
    save_adapter(loaded.model, "trained", folder, base_model_name=loaded.facts.base_model_id)
    return folder


@torch.no_grad()
def live_logits(base: str | Path, adapters: dict[Path, float], ids: torch.Tensor) -> torch.Tensor:
    """Logits of base + adapters applied live (unmerged), with the given weights."""
    from core.lora.peft_format import load_adapter

    loaded = load_base_model(str(base), dtype="fp32")
    gains = {}
    for index, (folder, weight) in enumerate(adapters.items()):
        load_adapter(loaded.model, folder, name=f"a{index}", activate=False)
        gains[f"a{index}"] = weight
    set_active(loaded.model, gains)
    return loaded.model(ids).logits


def make_fine_tuned_copy(base: Path, folder: Path, rank: int = 2, seed: int = 7, noise: float = 0.0,
                         max_shard_size: str = "5GB") -> Path:
    """A "fully fine-tuned" copy of `base` whose q and v projections changed by a random rank-`rank` update
    (scale 0.05) plus `noise`, saved as a Hugging Face folder with the base's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("q_proj", "v_proj")):
                d_out, d_in = module.weight.shape
                up, down = torch.randn(d_out, rank, generator=generator), torch.randn(rank, d_in, generator=generator)
                module.weight += 0.05 * up @ down + noise * torch.randn(d_out, d_in, generator=generator)
        model.model.norm.weight += 1e-6  # a change LoRA cannot carry (small, so logits stay comparable)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return Path(folder)
