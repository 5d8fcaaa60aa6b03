"""Which modules get an adapter: presets, suffix lists, regexes, and per-module rank/alpha patterns.

Matching follows PEFT so configs mean the same in both: a list entry `t` matches module path `p` when
`p == t` or `p` ends with `.t`; a string that is not a preset is a regex that must match the whole path;
a rank/alpha pattern key `k` applies to `p` when `p` matches `(.*\\.)?k$`, first key wins.
"""

import re

from torch import nn

from core.lora.errors import AdapterConfigError
from core.models.base_weights import is_adaptable

# Suffixes per preset, covering Llama-style names (Mistral, Qwen2/3, Gemma 2/3 share them), GPT-2's Conv1D names,
# and fused projections: a model that computes q, k and v in one layer (Phi-3's qkv_proj, GPT-2's c_attn) gets
# its adapter on that layer for "qv", as PEFT does when told that layer's name; Phi-3's gate_up_proj likewise.
PRESETS: dict[str, tuple[str, ...]] = {
    "qv": ("q_proj", "v_proj", "qkv_proj", "c_attn"),
    "attention": ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "c_attn", "attn.c_proj"),
    "mlp": ("gate_proj", "up_proj", "gate_up_proj", "down_proj", "c_fc", "mlp.c_proj"),
    "all-linear": (),  # every adaptable layer except the LM head
}
DEFAULT_PRESET = "qv"

Targets = str | list[str] | tuple[str, ...]


def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Path -> module for every layer LoRA can wrap; an existing LoRA layer counts once (not its base)."""
    from core.lora.layer import LoraLayer

    found: dict[str, nn.Module] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, LoraLayer) or is_adaptable(child):
                found[path] = child
            else:
                walk(child, f"{path}.")

    walk(model, "")
    return found


def resolve_targets(model: nn.Module, targets: Targets = DEFAULT_PRESET) -> list[str]:
    """Module paths selected by a preset name, a list of names (suffix match) or a regex (full match)."""
    candidates = adaptable_modules(model)
    if isinstance(targets, str) and targets in PRESETS:
        if targets == "all-linear":
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            paths = [p for p, m in candidates.items() if not _is_head(m, head)]
        else:
            paths = [p for p in candidates if matches_any(p, PRESETS[targets])]
    elif isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as error:
            raise AdapterConfigError(
                f"Target {targets!r} is neither a preset ({', '.join(PRESETS)}) nor a valid regex ({error}). "
                "Use a preset, a list of module names, or fix the regex."
            ) from None
        paths = [p for p in candidates if pattern.fullmatch(p)]
    else:
        paths = [p for p in candidates if matches_any(p, targets)]
    if not paths:
        names = sorted({p.rsplit(".", 1)[-1] for p in candidates})
        raise AdapterConfigError(
            f"Targets {targets!r} match no linear layer of this model. Its linear layers are named: "
            f"{', '.join(names) or 'none'}. Use one of those names or a preset ({', '.join(PRESETS)})."
        )
    return paths


def matches_any(path: str, names: list[str] | tuple[str, ...]) -> bool:
    return any(path == name or path.endswith(f".{name}") for name in names)


def pattern_value(patterns: dict[str, float], path: str, default: float) -> float:
    """The rank or alpha for `path`: the first pattern key matching its end, else the default (PEFT's rule)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def canonical_targets(model: nn.Module, paths: list[str]) -> list[str]:
    """The shortest `target_modules` list selecting exactly `paths`: leaf names if they suffice, else longer
    suffixes."""
    candidates = list(adaptable_modules(model))
    for depth in range(1, max(p.count(".") for p in paths) + 1):
        suffixes = sorted({".".join(p.split(".")[-depth:]) for p in paths})
        if {p for p in candidates if matches_any(p, suffixes)} == set(paths):
            return suffixes
    return sorted(paths)


def _is_head(module: nn.Module, head: nn.Module | None) -> bool:
    from core.lora.layer import LoraLayer

    base = module.base_layer if isinstance(module, LoraLayer) else module
    return head is not None and (base is head or module is head)


def targets_text(targets: object) -> str:
    """Targets as a listing shows them: a preset or pattern as it is, names joined; anything else (a row written
    before adapters were validated on import) shown as what it is, so one bad record never breaks a list."""
    if isinstance(targets, str):
        return targets
    if isinstance(targets, list) and all(isinstance(name, str) for name in targets):
        return ", ".join(targets)
    return "" if targets is None else f"(invalid: {targets!r})"
