"""New adapters from old: weighted combinations of adapters, and SVD extraction from a full fine-tune.

Combination of adapters i with gains g_i: W' = W + sum_i g_i * s_i * B_i A_i, as one adapter either
    exactly:     A' = concat_i(g_i s_i A_i) (rows), B' = concat_i(B_i) (columns), scaling 1, rank sum r_i
    compressed:  the best rank-k approximation of that sum by SVD (relative Frobenius error reported).
Extraction: dW = W_tuned - W_base = U S V^T, keep k singular values: B = U_k S_k, A = V_k^T, scaling 1.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from core.lora.errors import AdapterConfigError
from core.lora.layer import LoraAdapter, LoraLayer
from core.lora.model import adapter_names, install_adapter, lora_layers
from core.lora.targets import Targets, adaptable_modules, resolve_targets
from core.models.base_weights import layer_shape, read_weight


@dataclass
class LowRankReport:
    """Per module: the new adapter's rank and its relative Frobenius error ||dW - B A|| / ||dW|| (0 when exact)."""

    name: str
    ranks: dict[str, int]
    relative_errors: dict[str, float]

    @property
    def max_relative_error(self) -> float:
        return max(self.relative_errors.values(), default=0.0)


def combine_adapters(
    model: nn.Module, gains: dict[str, float], new_name: str, rank: int | None = None,
) -> LowRankReport:
    """Add adapter `new_name` = sum_i gain_i * adapter_i: exact by concatenation, or SVD-compressed to `rank`."""
    _check_combinable(model, gains, rank)
    plan, ranks, errors = {}, {}, {}
    for path, layer in lora_layers(model).items():
        parts = [(layer.adapters[name], gain) for name, gain in gains.items() if name in layer.adapters]
        if not parts:
            continue
        device = layer.base_layer.weight.device
        if rank is None:
            down = torch.cat([gain * adapter.scaling * adapter.lora_A.detach() for adapter, gain in parts], dim=0)
            up = torch.cat([adapter.lora_B.detach() for adapter, _ in parts], dim=1)
            errors[path] = 0.0
        else:
            delta = sum(gain * adapter.delta_weight().detach() for adapter, gain in parts)
            down, up, errors[path] = low_rank_factors(delta, rank)
        plan[path] = adapter_from_factors(down, up, device)
        ranks[path] = down.shape[0]
    install_adapter(model, new_name, plan)
    return LowRankReport(new_name, ranks, errors)


def extract_adapter(
    base_model: nn.Module,
    tuned: nn.Module | dict[str, torch.Tensor],
    rank: int,
    name: str = "extracted",
    targets: Targets = "all-linear",
) -> LowRankReport:
    """Add to `base_model` a rank-`rank` adapter approximating a full fine-tune of the targeted modules.

    `tuned` is the fine-tuned model (same architecture) or a delta state dict {"<module path>.weight": W_tuned -
    W_base} in the model's own storage orientation (GPT-2 Conv1D weights are d_in x d_out).
    """
    if rank < 1:
        raise AdapterConfigError(f"Extraction rank must be >= 1, got {rank}. Choose e.g. 16.")
    base_layers = adaptable_modules(base_model)
    tuned_layers = adaptable_modules(tuned) if isinstance(tuned, nn.Module) else None
    deltas = {}
    for path in resolve_targets(base_model, targets):
        base = _base_of(base_layers[path])
        deltas[path] = _delta(path, base, tuned, tuned_layers)
    plan, ranks, errors = {}, {}, {}
    for path, delta in deltas.items():
        down, up, errors[path] = low_rank_factors(delta, rank)
        plan[path] = adapter_from_factors(down, up, _base_of(base_layers[path]).weight.device)
        ranks[path] = down.shape[0]
    install_adapter(base_model, name, plan)
    return LowRankReport(name, ranks, errors)


@torch.no_grad()
def low_rank_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, relative error) with B @ A the best rank-`rank` approximation of `delta` (Eckart-Young)."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    k = min(rank, s.numel())
    total = float(torch.linalg.norm(s))
    error = float(torch.linalg.norm(s[k:])) / total if total > 0 else 0.0
    return vh[:k].contiguous(), (u[:, :k] * s[:k]).contiguous(), error


def adapter_from_factors(down: torch.Tensor, up: torch.Tensor, device: torch.device) -> LoraAdapter:
    """An adapter whose update is exactly up @ down: rank = rows of down, alpha = rank so the scaling is 1."""
    r = down.shape[0]
    adapter = LoraAdapter(down.shape[1], up.shape[0], r, alpha=r, device=device)
    with torch.no_grad():
        adapter.lora_A.copy_(down)
        adapter.lora_B.copy_(up)
    return adapter


def _check_combinable(model: nn.Module, gains: dict[str, float], rank: int | None) -> None:
    known = adapter_names(model)
    unknown = [name for name in gains if name not in known]
    if not gains or unknown:
        raise AdapterConfigError(
            f"Cannot combine {', '.join(map(repr, unknown or gains)) or 'no adapters'}: loaded adapters are "
            f"{', '.join(map(repr, known)) or 'none'}. Name at least one loaded adapter."
        )
    if rank is not None and rank < 1:
        raise AdapterConfigError(
            f"The combined rank must be >= 1, got {rank}. Leave it empty for an exact combination."
        )
    for layer in lora_layers(model).values():
        dora = [name for name in gains if name in layer.adapters and layer.adapters[name].use_dora]
        if dora:
            raise AdapterConfigError(
                f"Adapter {dora[0]!r} uses DoRA, whose per-row rescaling is not a low-rank update, so it cannot be "
                "combined. Merge it into the base instead, or combine plain LoRA adapters only."
            )


def _base_of(module: nn.Module) -> nn.Module:
    return module.base_layer if isinstance(module, LoraLayer) else module


def _delta(
    path: str, base: nn.Module, tuned: nn.Module | dict, tuned_layers: dict[str, nn.Module] | None
) -> torch.Tensor:
    """W_tuned - W_base for one module as a dense (d_out, d_in) tensor, checking the shapes agree."""
    d_in, d_out = layer_shape(base)
    if tuned_layers is not None:
        if path not in tuned_layers:
            raise AdapterConfigError(
                f"The fine-tuned model has no module {path}; both models need the same architecture."
            )
        delta = read_weight(_base_of(tuned_layers[path])).float() - read_weight(base).float()
    else:
        key = f"{path}.weight"
        if key not in tuned:
            raise AdapterConfigError(f"The delta state dict has no {key!r}. Give a delta for every targeted module.")
        stored = tuned[key].float()
        delta = stored.T if isinstance(base, Conv1D) else stored
    if tuple(delta.shape) != (d_out, d_in):
        raise AdapterConfigError(
            f"Module {path}: the fine-tuned weight has shape {tuple(delta.shape)}, the base needs {(d_out, d_in)}. "
            "Both models must share one architecture."
        )
    return delta
