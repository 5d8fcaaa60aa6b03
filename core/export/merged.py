"""Merged checkpoints: base + adapters folded into one plain model, saved as a Hugging Face folder.

The base is always loaded in full precision (fp32, no quantization), even for an adapter trained on a 4-bit
base: merging into dequantized-then-requantized weights would bake rounding noise into the export. The merged
weights are then stored in the precision asked for: by default ("auto") the one the base itself is stored in,
so a bf16 base gives a bf16 export of the same size rather than an fp32 one twice as large.
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
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from core.export.output import ExportError
from core.lora.model import set_active
from core.lora.peft_format import load_adapter
from core.models.devices import DTYPES
from core.models.loading import LoadedModel, load_base_model, unshared_state_dict
from core.models.safetensors_file import save_tensors

DEFAULT_SHARD_BYTES = 2 * 1024**3
AUTO_DTYPE = "auto"
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


def stored_dtype(source: str | Path) -> str:
    """The DTYPES name of the precision a model's config says its weights are stored in, for a folder or
    a hub id alike ("fp32" when it names none of them)."""
    try:
        stored = AutoConfig.from_pretrained(source).dtype
    except (OSError, ValueError):
        return "fp32"
    return next((name for name, dtype in DTYPES.items() if dtype in (stored, str(stored))), "fp32")


def save_merged(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES, dtype: str = "fp32",
) -> list[Path]:
    """Write config, generation config, tokenizer (with chat template) and safetensors weights (in `dtype`, a
    DTYPES name) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    config.dtype = DTYPES[dtype]
    if hasattr(config, "quantization_config"):  # a quantized source's marker; the merged weights are dense
        del config.quantization_config
    config.architectures = [type(model).__name__]
    state = unshared_state_dict(model, DTYPES[dtype])
    overflowing = [key for key, tensor in state.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if overflowing:
        raise ExportError(f"The merged weight {overflowing[0]} does not fit in {dtype} (fp16 stops at 65504), so "
                          "nothing was written. Export it in bf16 or fp32 instead.")
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return _save_weights(state, folder, max_shard_bytes)


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
