"""Adapters on a whole model: inject, freeze, count, choose the active set, merge, and unload.

A model carries any number of named adapters. Each targeted layer is replaced by a `LoraLayer` holding its
share of every adapter; which adapters (with which gains) take part in a forward is the model's active set,
switchable per call without reloading the base:

    add_adapter(model, "support", LoraSettings(r=8, targets="attention"))
    with active_adapters(model, {"support": 1.0, "tone": 0.5}):
        logits = model(ids).logits
    with active_adapters(model, {}):            # the plain base, bit for bit
        ...

All changes are validated before the model is touched, so a failure leaves it as it was.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from core.lora.errors import AdapterConfigError, AdapterStateError
from core.lora.layer import LoraAdapter, LoraLayer
from core.lora.targets import DEFAULT_PRESET, Targets, adaptable_modules, pattern_value, resolve_targets
from core.models.loading import count_parameters


@dataclass
class LoraSettings:
    """What a new adapter looks like. `targets`: a preset (qv, attention, mlp, all-linear), names, or a regex."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Targets = DEFAULT_PRESET
    use_rslora: bool = False
    use_dora: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)


@dataclass
class AdapterReport:
    """Where an adapter went and what it costs: trainable = sum over modules of r * (d_in + d_out)."""

    name: str
    modules: list[str]
    trainable: int
    total: int
    warning: str | None = None  # e.g. the adapter was made on a base of another architecture fingerprint

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


def add_adapter(
    model: nn.Module, name: str = "default", settings: LoraSettings | None = None, activate: bool = True
) -> AdapterReport:
    """Inject a freshly initialised adapter into the targeted layers; freeze everything but it (and activate it)."""
    settings = settings or LoraSettings()
    layers = adaptable_modules(model)
    plan = {}
    for path in resolve_targets(model, settings.targets):
        base = layers[path].base_layer if isinstance(layers[path], LoraLayer) else layers[path]
        plan[path] = LoraAdapter.for_layer(
            base,
            r=int(pattern_value(settings.rank_pattern, path, settings.r)),
            alpha=pattern_value(settings.alpha_pattern, path, settings.alpha),
            dropout=settings.dropout,
            use_rslora=settings.use_rslora,
            use_dora=settings.use_dora,
        )
    install_adapter(model, name, plan)
    if activate:
        set_active(model, {name: 1.0})
    mark_trainable(model, name)
    return adapter_report(model, name)


def install_adapter(model: nn.Module, name: str, adapters: dict[str, LoraAdapter]) -> None:
    """Attach built adapters (module path -> adapter) under `name`, wrapping layers that have no LoRA yet; the new
    modules take the train/eval mode of the layer they wrap, so dropout stays off in a model served for chat.

    Checks every path first, so a bad path or a taken name changes nothing.
    """
    if name in adapter_names(model):
        raise AdapterConfigError(f"The model already has an adapter named {name!r}. Pick another name or delete it.")
    layers = adaptable_modules(model)
    missing = [path for path in adapters if path not in layers]
    if missing:
        raise AdapterConfigError(f"Module {missing[0]} is not a linear layer of this model; cannot attach {name!r}.")
    for path, adapter in adapters.items():
        layer = layers[path]
        if not isinstance(layer, LoraLayer):
            layer = LoraLayer(layer, path).train(layer.training)
            model.set_submodule(path, layer)
        layer.add_adapter(name, adapter.train(layer.training))  # an adapter loaded for chat must not drop out


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Path -> LoraLayer for every wrapped layer."""
    return {path: m for path, m in model.named_modules() if isinstance(m, LoraLayer)}


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters the model carries, in the order they were added."""
    names: dict[str, None] = {}
    for layer in lora_layers(model).values():
        names.update(dict.fromkeys(layer.adapters))
    return list(names)


def adapter_modules(model: nn.Module, name: str) -> dict[str, LoraAdapter]:
    """Module path -> this adapter's part in that layer."""
    found = {path: layer.adapters[name] for path, layer in lora_layers(model).items() if name in layer.adapters}
    if not found:
        raise AdapterConfigError(
            f"The model has no adapter named {name!r}; it has {', '.join(map(repr, adapter_names(model))) or 'none'}."
        )
    return found


def mark_trainable(model: nn.Module, name: str) -> None:
    """Freeze every parameter except those of adapter `name` (A, B and a DoRA magnitude)."""
    trainable = {id(p) for adapter in adapter_modules(model, name).values() for p in adapter.parameters()}
    for param in model.parameters():
        param.requires_grad_(id(param) in trainable)


def adapter_report(model: nn.Module, name: str) -> AdapterReport:
    modules = adapter_modules(model, name)
    trainable = sum(p.numel() for adapter in modules.values() for p in adapter.parameters())
    return AdapterReport(name, list(modules), trainable, count_parameters(model))


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter `name` from every layer (layers keep their LoRA wrapper; `unload` removes those)."""
    adapter_modules(model, name)  # raises for an unknown name
    for layer in lora_layers(model).values():
        if name in layer.adapters:
            layer.delete_adapter(name)


def active_gains(model: nn.Module) -> dict[str, float]:
    """The model's active set: adapter name -> gain (empty: the plain base)."""
    gains: dict[str, float] = {}
    for layer in lora_layers(model).values():
        gains.update(layer.active)
    return gains


def set_active(model: nn.Module, gains: dict[str, float] | str | None) -> None:
    """Activate one adapter (a name), a weighted set ({name: gain}), or none (None or {})."""
    gains = {gains: 1.0} if isinstance(gains, str) else dict(gains or {})
    known = adapter_names(model)
    unknown = [name for name in gains if name not in known]
    if unknown:
        raise AdapterConfigError(
            f"No adapter named {', '.join(map(repr, unknown))} is loaded; "
            f"loaded: {', '.join(map(repr, known)) or 'none'}. "
            "Load or create it first."
        )
    layers = lora_layers(model).values()
    merged = [layer.path for layer in layers if layer.merged]
    if merged:
        raise AdapterStateError(f"Adapters are merged into {merged[0]} and others; unmerge before switching adapters.")
    for layer in layers:
        layer.set_active({name: gain for name, gain in gains.items() if name in layer.adapters})


@contextmanager
def active_adapters(model: nn.Module, gains: dict[str, float] | str | None) -> Iterator[nn.Module]:
    """Run a block with another active set, then restore the previous one (side-by-side chat, A/B evals)."""
    previous = {path: dict(layer.active) for path, layer in lora_layers(model).items()}
    set_active(model, gains)
    try:
        yield model
    finally:
        for path, layer in lora_layers(model).items():
            layer.active = previous.get(path, {})


@contextmanager
def routed_adapters(model: nn.Module, row_gains: list[dict[str, float]]) -> Iterator[nn.Module]:
    """Run a block where row i of the batch gets active set `row_gains[i]` ({} = the plain base), rows with the
    same set grouped so each adapter's product runs once per group: one batch serves requests for different
    adapters. The model's own active set is neither used nor changed."""
    known = adapter_names(model)
    groups: dict[tuple, list[int]] = {}
    for row, gains in enumerate(row_gains):
        unknown = [name for name in gains if name not in known]
        if unknown:
            raise AdapterConfigError(f"No adapter named {unknown[0]!r} is loaded; loaded: "
                                     f"{', '.join(map(repr, known)) or 'none'}. Load it first.")
        groups.setdefault(tuple(sorted(gains.items())), []).append(row)
    layers = list(lora_layers(model).values())
    merged = [layer.path for layer in layers if layer.merged]
    if merged:
        raise AdapterStateError(f"Adapters are merged into {merged[0]} and others; unmerge before serving adapters.")
    device = next(model.parameters()).device
    whole = len(groups) == 1
    indexed = [(None if whole else torch.tensor(rows, device=device), dict(key)) for key, rows in groups.items()]
    try:
        for layer in layers:
            routes = []
            for rows, gains in indexed:
                here = {name: gain for name, gain in gains.items() if name in layer.adapters}
                routes.append((rows, here, layer.scaled(here)))
            layer.routes = tuple(routes)
        yield model
    finally:
        for layer in layers:
            layer.routes = None


def merge(model: nn.Module) -> None:
    """Fold the active adapters into the base weights, all layers or none (every result is checked finite first)."""
    layers = [layer for layer in lora_layers(model).values() if layer.active]
    if not layers:
        raise AdapterStateError("No adapter is active, so there is nothing to merge. Activate an adapter first.")
    for layer in layers:
        layer.plan_merge()  # raises before anything is written
    for layer in layers:
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Take merged adapters back out of the base weights."""
    layers = [layer for layer in lora_layers(model).values() if layer.merged]
    if not layers:
        raise AdapterStateError("Nothing is merged, so there is nothing to unmerge.")
    for layer in layers:
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapters and replace every LoRA layer by its base: a plain transformers model again."""
    if active_gains(model) and not any(layer.merged for layer in lora_layers(model).values()):
        merge(model)
    return unload(model)


def unload(model: nn.Module) -> nn.Module:
    """Put every base layer back as it is now (merged adapters stay in the weights, unmerged ones are dropped)."""
    for path, layer in lora_layers(model).items():
        model.set_submodule(path, layer.base_layer)
    return model
