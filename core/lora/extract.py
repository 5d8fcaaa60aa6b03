"""A LoRA adapter from a full fine-tune: per targeted layer dW = W_tuned - W_base, kept to its top singular
directions (Eckart-Young: the best rank-r approximation), read tensor by tensor from the two checkpoints so
neither model is ever whole in memory.

    base/*.safetensors ──┐ one tensor of each at a time (sharded checkpoints through their index)
                         ├─ targeted weight: dW (fp32) ─svd─> B = U_r S_r, A = V_r^T, alpha = r (scale 1)
    tuned/*.safetensors ─┘ any other tensor that changed (embeddings, norms, biases): reported, LoRA cannot carry it

The rank is fixed (`rank`), or per layer the smallest that keeps `energy` of the layer's sum of squared
singular values (PEFT's rank_pattern). Layers whose dW is zero are left out.
"""

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from core.lora.errors import AdapterConfigError
from core.lora.peft_format import CONFIG_FILE, WEIGHTS_FILE, AdapterConfig, peft_key
from core.lora.targets import Targets, resolve_targets
from core.models.safetensors_file import save_tensors

INDEX_FILE = "model.safetensors.index.json"
MAX_EXTRACTION_RANK = 4096


@dataclass
class LayerExtraction:
    rank: int
    relative_error: float  # ||dW - B A|| / ||dW|| (Frobenius)
    energy_kept: float  # share of sum(s^2) the kept directions hold


@dataclass
class ExtractionReport:
    """What an extraction kept, per layer, and what changed that LoRA cannot carry."""

    layers: dict[str, LayerExtraction] = field(default_factory=dict)
    unchanged_layers: list[str] = field(default_factory=list)  # targeted, but dW == 0: left out
    other_changes: dict[str, float] = field(default_factory=dict)  # tensor -> share of the whole change's energy

    @property
    def max_relative_error(self) -> float:
        return max((layer.relative_error for layer in self.layers.values()), default=0.0)

    @property
    def other_change_share(self) -> float:
        return sum(self.other_changes.values())

    def to_json(self) -> dict:
        return {**asdict(self), "max_relative_error": self.max_relative_error,
                "other_change_share": self.other_change_share}


def checkpoint_index(folder: Path) -> dict[str, Path]:
    """Every tensor name of a Hugging Face folder's safetensors checkpoint, with the file that holds it."""
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise AdapterConfigError(f"{folder} has no *.safetensors weights to extract from. Point to a Hugging Face "
                                 "model folder (config.json and *.safetensors).")
    names = {}
    for file in files:
        with safe_open(file, "pt") as handle:
            names.update(dict.fromkeys(handle.keys(), file))
    return names


def extract_from_checkpoints(base: Path, tuned: Path, out: Path, rank: int | None = None,
                             energy: float | None = None, targets: Targets = "all-linear",
                             device: str = "cpu") -> ExtractionReport:
    """Write to `out` the PEFT adapter that approximates `tuned` as `base` + LoRA, and report what it kept."""
    check_choice(rank, energy)
    skeleton = _skeleton(base, tuned)
    modules = dict(skeleton.named_modules())
    base_files, tuned_files = checkpoint_index(base), checkpoint_index(tuned)
    prefix = f"{skeleton.base_model_prefix}." if skeleton.base_model_prefix else ""
    key_of = {name: name if name in tuned_files else name.removeprefix(prefix) for name in _tensor_names(skeleton)}
    missing = [key for key in key_of.values() if key not in tuned_files and key in base_files]
    if missing:
        raise AdapterConfigError(f"The fine-tuned model has no tensor {missing[0]!r}; both models need the same "
                                 "architecture.")
    targeted = {f"{path}.weight": path for path in resolve_targets(skeleton, targets)}
    report, tensors, total_change = ExtractionReport(), {}, 0.0
    others: dict[str, float] = {}
    for name, key in key_of.items():
        if key not in base_files:
            continue  # tied weights (lm_head = embed_tokens) are stored once
        delta = _read(tuned_files[key], key, device) - _read(base_files[key], key, device)
        change = float(delta.pow(2).sum())
        total_change += change
        path = targeted.get(name)
        if path is None:
            if change > 0:
                others[key] = change
            continue
        if change == 0:
            report.unchanged_layers.append(path)
            continue
        if isinstance(modules[path], Conv1D):  # GPT-2 stores d_in x d_out
            delta = delta.T
        down, up, layer = _truncate(delta, rank, energy)
        tensors[peft_key(path, "lora_A")] = down.cpu().contiguous()
        tensors[peft_key(path, "lora_B")] = up.cpu().contiguous()
        report.layers[path] = layer
    if not report.layers:
        raise AdapterConfigError(f"No targeted layer differs between {base} and {tuned}: there is nothing to "
                                 "extract. Check that the second folder is the fine-tuned model, or widen --targets.")
    report.other_changes = {key: change / total_change for key, change in others.items()}
    _write_adapter(out, tensors, report, modules, str(base))
    return report


def check_choice(rank: int | None, energy: float | None) -> None:
    """Refuse a request that is not exactly one of: a rank from 1, or an energy share in (0, 1]."""
    if (rank is None) == (energy is None):
        raise AdapterConfigError("Give either a rank (e.g. 16) or an energy share to keep (e.g. 0.9 for 90%).")
    if rank is not None and not 1 <= rank <= MAX_EXTRACTION_RANK:
        raise AdapterConfigError(f"The extraction rank is {rank}; use 1 to {MAX_EXTRACTION_RANK} (8 to 64 is usual).")
    if energy is not None and not (math.isfinite(energy) and 0 < energy <= 1):
        raise AdapterConfigError(f"The energy share is {energy}; use a share above 0 and at most 1, e.g. 0.9.")


def _skeleton(base: Path, tuned: Path) -> torch.nn.Module:
    """The base's architecture on the meta device (no weights), once both configs are found to agree."""
    configs = []
    for folder in (base, tuned):
        try:
            configs.append(AutoConfig.from_pretrained(folder).to_dict())
        except Exception as error:  # noqa: BLE001 - a missing or broken config.json, in transformers' words
            raise AdapterConfigError(f"Cannot read the model config in {folder}: {str(error).splitlines()[0]}. "
                                     "Point to a Hugging Face model folder.") from None
    for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "n_embd", "n_layer"):
        if configs[0].get(key) != configs[1].get(key):
            raise AdapterConfigError(f"The models differ in {key} ({configs[0].get(key)!r} in {base}, "
                                     f"{configs[1].get(key)!r} in {tuned}): the tuned model must be a fine-tune of "
                                     "this base.")
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))


def _tensor_names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters(remove_duplicate=True)]


def _read(file: Path, key: str, device: str) -> torch.Tensor:
    with safe_open(file, "pt", device=device) as handle:
        return handle.get_tensor(key).float()


@torch.no_grad()
def _truncate(delta: torch.Tensor, rank: int | None, energy: float | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   LayerExtraction]:
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    power = s.pow(2)
    total = float(power.sum())
    if rank is None:
        kept_share = torch.cumsum(power, 0) / total
        k = int((kept_share < energy - 1e-9).sum()) + 1
    else:
        k = rank
    k = min(k, s.numel())
    kept = float(power[:k].sum())
    layer = LayerExtraction(k, math.sqrt(max(total - kept, 0.0) / total), kept / total)
    return vh[:k], u[:, :k] * s[:k], layer


def _write_adapter(out: Path, tensors: dict, report: ExtractionReport, modules: dict, base_name: str) -> None:
    ranks = {path: layer.rank for path, layer in report.layers.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    config = AdapterConfig(
        r=r, lora_alpha=r, target_modules=sorted({path.rsplit(".", 1)[-1] for path in ranks}),
        fan_in_fan_out=any(isinstance(modules[path], Conv1D) for path in ranks), base_model_name_or_path=base_name,
        rank_pattern={path: k for path, k in ranks.items() if k != r},
        alpha_pattern={path: k for path, k in ranks.items() if k != r},  # alpha = rank: every scale is 1
    )
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, out / WEIGHTS_FILE, metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
