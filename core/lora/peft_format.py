"""Adapters on disk in PEFT's format, so they load in PEFT, vLLM and llama.cpp's converter, and theirs in ours.

    folder/adapter_config.json          r, lora_alpha, target_modules, use_dora, ... (unknown keys ignored)
    folder/adapter_model.safetensors    base_model.model.<module path>.lora_A.weight   (r, d_in)
                                        base_model.model.<module path>.lora_B.weight   (d_out, r)
                                        base_model.model.<module path>.lora_magnitude_vector  (d_out,)  DoRA

`PEFT_SUFFIXES` is the one key mapping: `peft_key` writes with it, `parse_peft_key` reads with it.
Loading validates the whole file against the model before attaching anything, so a bad adapter leaves the
model exactly as it was.
"""

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from core.files import read_text_capped
from core.lora.base_identity import base_metadata, base_mismatch
from core.lora.errors import AdapterFileError
from core.lora.layer import LoraAdapter, LoraLayer
from core.lora.model import AdapterReport, adapter_modules, adapter_report, install_adapter, mark_trainable, set_active
from core.lora.targets import adaptable_modules, canonical_targets, pattern_value
from core.models.base_weights import layer_shape
from core.models.safetensors_file import save_tensors

MAX_RANK = 65536  # no layer of a real model is wider: a larger r is a broken file
MAX_CONFIG_BYTES = 1 << 20
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
PEFT_SUFFIXES = {"lora_A": "lora_A.weight", "lora_B": "lora_B.weight", "magnitude": "lora_magnitude_vector"}


@dataclass
class AdapterConfig:
    """The adapter_config.json fields LoRA Forge reads and writes (PEFT's names)."""

    r: int = 8
    lora_alpha: float = 8
    target_modules: list[str] | str = field(default_factory=list)
    lora_dropout: float = 0.0
    use_rslora: bool = False
    use_dora: bool = False
    fan_in_fan_out: bool = False
    base_model_name_or_path: str | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    modules_to_save: list[str] | None = None
    bias: str = "none"
    peft_type: str = "LORA"
    task_type: str = "CAUSAL_LM"

    def rank(self, path: str) -> int:
        return int(pattern_value(self.rank_pattern, path, self.r))

    def alpha(self, path: str) -> float:
        return pattern_value(self.alpha_pattern, path, self.lora_alpha)


def peft_key(path: str, field_name: str) -> str:
    """The safetensors key PEFT uses for one tensor of the adapter at module `path`."""
    return f"{PEFT_PREFIX}{path}.{PEFT_SUFFIXES[field_name]}"


def parse_peft_key(key: str) -> tuple[str, str] | None:
    """(module path, field) for a PEFT key, with or without the `base_model.model.` prefix; None if not LoRA's."""
    key = key.removeprefix(PEFT_PREFIX)
    for field_name, suffix in PEFT_SUFFIXES.items():
        if key.endswith(f".{suffix}"):
            return key[: -len(suffix) - 1], field_name
    return None


def save_adapter(model: nn.Module, name: str, folder: str | Path, base_model_name: str | None = None) -> Path:
    """Write adapter `name` as a PEFT folder; files appear whole (written aside, then renamed)."""
    modules = adapter_modules(model, name)
    config = _config_for(model, modules, base_model_name or getattr(model, "name_or_path", None) or None)
    tensors = {}
    for path, adapter in modules.items():
        tensors[peft_key(path, "lora_A")] = adapter.lora_A.detach().cpu().contiguous()
        tensors[peft_key(path, "lora_B")] = adapter.lora_B.detach().cpu().contiguous()
        if adapter.use_dora:
            tensors[peft_key(path, "magnitude")] = adapter.magnitude.detach().cpu().contiguous()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged_weights, staged_config = folder / f".{WEIGHTS_FILE}.partial", folder / f".{CONFIG_FILE}.partial"
    config_of_base = getattr(model, "config", None)
    recorded = base_metadata(config_of_base) if config_of_base is not None else {}
    save_tensors(tensors, staged_weights, metadata={"format": "pt", **recorded})
    staged_config.write_text(json.dumps(asdict(config), indent=2) + "\n")
    os.replace(staged_weights, folder / WEIGHTS_FILE)
    os.replace(staged_config, folder / CONFIG_FILE)
    return folder


def load_adapter(model: nn.Module, folder: str | Path, name: str = "default", activate: bool = True) -> AdapterReport:
    """Attach the PEFT adapter in `folder` as `name` (trainable, and active unless told otherwise)."""
    folder = Path(folder)
    config = read_config(folder)
    tensors = _read_tensors(folder / WEIGHTS_FILE)
    layers = adaptable_modules(model)
    plan = {path: _build(path, parts, layers, config, folder) for path, parts in _group(tensors, folder).items()}
    install_adapter(model, name, plan)
    if activate:
        set_active(model, {name: 1.0})
    mark_trainable(model, name)
    report = adapter_report(model, name)
    if getattr(model, "config", None) is not None:
        report.warning = base_mismatch(folder / WEIGHTS_FILE, model.config)
    return report


def read_config(folder: str | Path) -> AdapterConfig:
    """adapter_config.json as an AdapterConfig; unknown keys are ignored, unsupported features refused."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if folder.suffix == ".zip" and folder.is_file():
        raise AdapterFileError(f"{folder} is a zip file. Unzip it and point to the folder inside, which holds "
                               f"{CONFIG_FILE} and {WEIGHTS_FILE}.")
    if not folder.exists():
        raise AdapterFileError(f"{folder} does not exist. Check the path to the adapter folder.")
    if not path.is_file():
        raise AdapterFileError(
            f"{folder} has no {CONFIG_FILE}, so it is not a PEFT adapter folder. Point to the folder that holds "
            f"{CONFIG_FILE} and {WEIGHTS_FILE}."
        )
    try:
        raw = json.loads(read_text_capped(path, MAX_CONFIG_BYTES, what="An adapter_config.json"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise AdapterFileError(f"{path} is not valid JSON ({str(error)[:200]}). Save the adapter again.") from None
    if not isinstance(raw, dict):
        raise AdapterFileError(f"{path} holds a JSON {type(raw).__name__}, not an object of settings (r, lora_alpha, "
                               "target_modules, ...). Save the adapter again.")
    known = {f.name for f in fields(AdapterConfig)}
    config = AdapterConfig(**{k: v for k, v in raw.items() if k in known and v is not None})
    if problem := _config_problem(config):
        raise AdapterFileError(f"{path}: {problem}. Fix that setting, or save the adapter again.")
    if config.peft_type != "LORA":
        raise AdapterFileError(f"{path} describes a {config.peft_type} adapter; LoRA Forge reads LoRA adapters only.")
    if config.bias != "none" or config.modules_to_save:
        raise AdapterFileError(
            f"{path} trains extra modules (bias={config.bias!r}, modules_to_save={config.modules_to_save}), which "
            "LoRA Forge does not support. Use an adapter with bias 'none' and no modules_to_save."
        )
    return config


def _config_problem(config: AdapterConfig) -> str | None:
    """The first setting of an adapter_config.json that no LoRA adapter can have, in words; None if all can."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def number(value) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if not whole(config.r) or not 1 <= config.r <= MAX_RANK:
        return f"r is {config.r!r}; a LoRA rank is a whole number from 1 to {MAX_RANK}"
    if not number(config.lora_alpha) or config.lora_alpha <= 0:
        return f"lora_alpha is {config.lora_alpha!r}; it must be a number above 0"
    if not number(config.lora_dropout) or not 0 <= config.lora_dropout < 1:
        return f"lora_dropout is {config.lora_dropout!r}; it must be from 0 up to (not including) 1"
    targets = config.target_modules
    if not (isinstance(targets, str) or isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        return f"target_modules is {targets!r}; it must be a list of module names, or one name or pattern"
    for name in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if not isinstance(getattr(config, name), bool):
            return f"{name} is {getattr(config, name)!r}; it must be true or false"
    if not isinstance(config.rank_pattern, dict) or not all(
            whole(r) and 1 <= r <= MAX_RANK for r in config.rank_pattern.values()):
        return f"rank_pattern is {config.rank_pattern!r}; it maps module names to ranks from 1 to {MAX_RANK}"
    alphas = config.alpha_pattern
    if not isinstance(alphas, dict) or not all(number(a) and a > 0 for a in alphas.values()):
        return f"alpha_pattern is {config.alpha_pattern!r}; it maps module names to alphas above 0"
    for name in ("peft_type", "bias"):
        if not isinstance(getattr(config, name), str):
            return f"{name} is {getattr(config, name)!r}; it must be text"
    if config.base_model_name_or_path is not None and not isinstance(config.base_model_name_or_path, str):
        return f"base_model_name_or_path is {config.base_model_name_or_path!r}; it must be text"
    return None


def _config_for(model: nn.Module, modules: dict[str, LoraAdapter], base_model_name: str | None) -> AdapterConfig:
    """Describe an adapter as PEFT would: the most common rank/alpha, plus patterns for the exceptions."""
    first = next(iter(modules.values()))
    if len({(a.use_dora, a.use_rslora) for a in modules.values()}) > 1:
        raise AdapterFileError("This adapter mixes DoRA/rsLoRA settings across modules, which PEFT cannot describe.")
    ranks = {path: a.r for path, a in modules.items()}
    alphas = {path: a.alpha for path, a in modules.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    layers = adaptable_modules(model)
    return AdapterConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=canonical_targets(model, list(modules)),
        lora_dropout=getattr(first.dropout, "p", 0.0),
        use_rslora=first.use_rslora,
        use_dora=first.use_dora,
        fan_in_fan_out=any(isinstance(layers[path].base_layer, Conv1D) for path in modules),
        base_model_name_or_path=base_model_name,
        rank_pattern={path: v for path, v in ranks.items() if v != r},
        alpha_pattern={path: v for path, v in alphas.items() if v != alpha},
    )


def _made_for(config: AdapterConfig) -> str:
    """' (base model X)' when the adapter names its base: a hint for the person, never a check, since a name is
    not an identity (the same base lives in folders of any name); shapes decide whether an adapter fits."""
    return f" (base model {config.base_model_name_or_path!r})" if config.base_model_name_or_path else ""


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise AdapterFileError(f"{path} is missing. An adapter folder needs {CONFIG_FILE} and {WEIGHTS_FILE}.")
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises several types for damaged files
        raise AdapterFileError(
            f"Could not read {path}: {str(error).splitlines()[0] or type(error).__name__}. The file is truncated "
            "or corrupt; save or download the adapter again."
        ) from None


def _group(tensors: dict[str, torch.Tensor], folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Module path -> {field: tensor}, refusing keys that are not LoRA A/B/magnitude tensors."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        parsed = parse_peft_key(key)
        if parsed is None:
            raise AdapterFileError(
                f"{folder / WEIGHTS_FILE} holds tensor {key!r}, which is not a LoRA A, B or DoRA magnitude. "
                "LoRA Forge loads plain LoRA/DoRA adapters only."
            )
        path, field_name = parsed
        grouped.setdefault(path, {})[field_name] = tensor
    if not grouped:
        raise AdapterFileError(f"{folder / WEIGHTS_FILE} holds no LoRA tensors. Save the adapter again.")
    return grouped


def _build(
    path: str, parts: dict[str, torch.Tensor], layers: dict[str, nn.Module], config: AdapterConfig, folder: Path
) -> LoraAdapter:
    """A filled LoraAdapter for one module, after checking the module exists and every tensor fits and is finite."""
    if path not in layers:
        raise AdapterFileError(
            f"The adapter in {folder} targets module {path!r}, which this base model does not have (or is not a "
            f"linear layer). It was trained for another architecture{_made_for(config)}; load it onto its own base."
        )
    layer = layers[path]
    base = layer.base_layer if isinstance(layer, LoraLayer) else layer
    d_in, d_out = layer_shape(base)
    r = config.rank(path)
    expected = {"lora_A": (r, d_in), "lora_B": (d_out, r)} | ({"magnitude": (d_out,)} if config.use_dora else {})
    for field_name, shape in expected.items():
        tensor = parts.get(field_name)
        if tensor is None:
            raise AdapterFileError(
                f"{folder / WEIGHTS_FILE} has no {peft_key(path, field_name)}. Save the adapter again."
            )
        if tuple(tensor.shape) != shape:
            raise AdapterFileError(
                f"{peft_key(path, field_name)} in {folder / WEIGHTS_FILE} has shape {tuple(tensor.shape)}, but module "
                f"{path} (d_in={d_in}, d_out={d_out}, r={r}) needs {shape}. The adapter was made for a different "
                f"base model or rank{_made_for(config)}; load it onto its own base."
            )
        if not torch.isfinite(tensor).all():
            raise AdapterFileError(
                f"{peft_key(path, field_name)} in {folder / WEIGHTS_FILE} contains NaN or Inf. The adapter is broken "
                "(training diverged); use an earlier checkpoint or train again with a lower learning rate."
            )
    adapter = LoraAdapter(
        d_in, d_out, r, config.alpha(path), config.lora_dropout, config.use_rslora, config.use_dora,
        device=base.weight.device,
    )
    with torch.no_grad():
        adapter.lora_A.copy_(parts["lora_A"])
        adapter.lora_B.copy_(parts["lora_B"])
        if config.use_dora:
            adapter.magnitude.copy_(parts["magnitude"])
    return adapter


@dataclass
class AdapterInfo:
    """What `adapters inspect` shows, read from the folder without loading a model."""

    folder: str
    base_model: str | None
    ranks: list[int]
    alpha: float
    targets: list[str] | str
    modules: int
    parameters: int
    size_bytes: int
    use_dora: bool
    use_rslora: bool


def inspect_adapter(folder: str | Path) -> AdapterInfo:
    """Summarise an adapter folder from its config and the safetensors header only (no tensors read)."""
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterFileError(f"{weights} is missing. An adapter folder needs {CONFIG_FILE} and {WEIGHTS_FILE}.")
    try:
        with safe_open(weights, "pt") as handle:
            shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
    except Exception as error:
        raise AdapterFileError(f"Could not read {weights}: {error}. The file is truncated or corrupt.") from None
    ranks = sorted({shape[0] for key, shape in shapes.items() if key.endswith(PEFT_SUFFIXES["lora_A"])})
    if not ranks:
        raise AdapterFileError(f"{weights} holds no LoRA tensors (no key ends in {PEFT_SUFFIXES['lora_A']}), so it "
                               "adapts nothing. Point to the folder of a LoRA adapter.")
    return AdapterInfo(
        folder=str(folder),
        base_model=config.base_model_name_or_path,
        ranks=ranks,
        alpha=config.lora_alpha,
        targets=config.target_modules,
        modules=sum(1 for key in shapes if key.endswith(PEFT_SUFFIXES["lora_A"])),
        parameters=sum(math.prod(shape) for shape in shapes.values()),
        size_bytes=weights.stat().st_size,
        use_dora=config.use_dora,
        use_rslora=config.use_rslora,
    )
