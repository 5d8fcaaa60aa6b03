"""Merged checkpoints: base + adapters folded into one plain model, saved as a Hugging Face folder.

The base is always loaded in full precision (fp32, no quantization), even for an adapter trained on a 4-bit
base: merging into dequantized-then-requantized weights would bake rounding noise into the export.
Several adapters merge as their weighted sum W + sum_i w_i s_i B_i A_i, the same active set the live
model uses, so the merged model equals the weighted composition applied live.

The folder is written with safetensors directly (sharded with an index when large) instead of
`save_pretrained`, because a model converted from GGUF carries a GGUF quantization marker that makes
transformers refuse to save it; the weights themselves are plain dense tensors.
"""

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.adapters import set_active
from core.models import LoadedModel, load_base_model
from core.peft_format import load_adapter
from core.safetensors_file import save_tensors

DEFAULT_SHARD_BYTES = 2 * 1024**3
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


@dataclass
class AdapterChoice:
    """One adapter to merge: its PEFT folder and its weight in the sum."""

    folder: Path
    weight: float = 1.0


def load_with_adapters(base: str, adapters: list[AdapterChoice], device: str = "cpu") -> LoadedModel:
    """Load `base` in fp32 without quantization and attach every adapter, active with its weight."""
    loaded = load_base_model(base, dtype="fp32", quantization="none", device=device)
    gains = {}
    for index, choice in enumerate(adapters):
        name = f"adapter{index}"
        load_adapter(loaded.model, choice.folder, name=name, activate=False)
        gains[name] = choice.weight
    set_active(loaded.model, gains)
    loaded.model.requires_grad_(False)
    return loaded


def save_merged(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES
) -> list[Path]:
    """Write config, generation config, tokenizer (with chat template) and safetensors weights into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):  # a quantized source's marker; the merged weights are dense
        del config.quantization_config
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return _save_weights(_unshared_state_dict(model), folder, max_shard_bytes)


def _save_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int) -> list[Path]:
    """One model.safetensors, or model-0000i-of-0000n.safetensors plus the index transformers reads."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    if len(shards) == 1:
        save_tensors(shards[0], folder / WEIGHTS_NAME, metadata={"format": "pt"})
        return [folder / WEIGHTS_NAME]
    files, weight_map = [], {}
    for number, shard in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_tensors(shard, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        files.append(folder / name)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return files


def _unshared_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """State dict with tied tensors stored once (the first name wins; transformers re-ties on load)."""
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in seen:
            seen.add(pointer)
            state[key] = tensor.detach().cpu().contiguous()
    return state
