"""What answers in a chat column or a blind A/B slot: the base model, one registered adapter, or a weighted set
of adapters such as `pirate:0.7, dates:0.5`.

A contender names adapters by their store rows (id, name, run id); `model_gains` loads the ones it needs into
the one base model, each once, and returns the active set to generate under, so every contender shares one
copy of the base weights.
"""

import math
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from core.chat.turns import model_turns
from core.errors import LoraForgeError
from core.lora.model import adapter_names, delete_adapter
from core.lora.peft_format import WEIGHTS_FILE, load_adapter

BASE_CHOICE = "base"  # the selector values for the base model and for a typed weighted set;
SET_CHOICE = "set"  # any other value is a registered adapter's id
SET_EXAMPLE = "pirate:0.7, dates:0.5"


class ContenderError(LoraForgeError):
    """A contender that cannot be built: an unknown or ambiguous adapter, a bad weight."""


@dataclass(frozen=True)
class Contender:
    """A label for people, and (adapter id, gain) pairs for the model; no pairs means the plain base."""

    label: str
    weights: tuple[tuple[int, float], ...] = ()

    @property
    def key(self) -> tuple:
        """The same adapters with the same weights are the same contender, whatever the label or order."""
        return tuple(sorted(self.weights))

    def describe(self) -> dict:
        """What a stored vote keeps about this side, so win rates survive renamed or deleted adapters."""
        return {"label": self.label, "adapters": [{"id": i, "weight": w} for i, w in self.weights]}


BASE = Contender("base model")


def choose(choice: str, set_text: str, adapters: list[dict]) -> Contender:
    """The contender a selector means: BASE_CHOICE, SET_CHOICE (parse `set_text`), or an adapter's id."""
    if choice == BASE_CHOICE:
        return BASE
    if choice == SET_CHOICE:
        return parse_set(set_text, adapters)
    adapter = next((a for a in adapters if str(a["id"]) == str(choice)), None)
    if adapter is None:
        raise ContenderError("That adapter is no longer registered (was its run deleted?). Choose another one.")
    return Contender(adapter["name"], ((adapter["id"], 1.0),))


def parse_set(text: str, adapters: list[dict]) -> Contender:
    """`name:weight, name:weight` (a name alone means weight 1); a name is an adapter's name, run id or id."""
    if not adapters:
        raise ContenderError("No adapters are registered yet: train one in the Train tab, or import one under "
                             "Adapters & Export.")
    if not text.strip():
        raise ContenderError(f"Type a weighted set of adapters first, e.g. {SET_EXAMPLE}.")
    weights: dict[int, float] = {}
    names: dict[int, str] = {}
    for part in text.split(","):
        reference, colon, weight_text = part.rpartition(":")
        if not colon:
            reference, weight_text = weight_text, "1"
        reference = reference.strip()
        adapter = _find(reference, adapters)
        if adapter["id"] in weights:
            raise ContenderError(f"{reference!r} appears twice in {text!r}; give each adapter once.")
        weights[adapter["id"]] = _weight(weight_text.strip(), reference)
        names[adapter["id"]] = adapter["name"]
    label = " + ".join(f"{names[i]} ×{w:g}" for i, w in weights.items())
    return Contender(label, tuple(weights.items()))


def model_gains(model: nn.Module, contender: Contender, adapters: list[dict]) -> dict[str, float]:
    """The active set for `contender` ({} for the base), loading its adapters into `model` on first use."""
    rows = {a["id"]: a for a in adapters}
    gains = {}
    for adapter_id, weight in contender.weights:
        if adapter_id not in rows:
            raise ContenderError(f"Adapter {adapter_id} is no longer registered (was its run deleted?). "
                                 "Choose another one.")
        gains[load_registered(model, rows[adapter_id], "adapter")] = weight
    return gains


def load_registered(model: nn.Module, adapter: dict, prefix: str) -> str:
    """Load a registered adapter (a store row) into `model` as `<prefix>-<id>` unless that exact version is there
    already, taking the model's turn (core.chat.turns); returns that name. The version is the folder and its
    weights file's size and modification time: a store id can be reused after a deletion, and a folder registered
    again may hold new weights, so an id alone would serve stale ones."""
    name = f"{prefix}-{adapter['id']}"
    version = _version(adapter["path"])
    with model_turns(model):
        loaded = loaded_versions(model)
        if name in adapter_names(model) and loaded.get(name) != version:
            delete_adapter(model, name)
        if name not in adapter_names(model):
            try:
                load_adapter(model, adapter["path"], name=name, activate=False)
            except LoraForgeError as error:
                raise ContenderError(f"Cannot load adapter {adapter['name']}: {error}") from None
            loaded[name] = version
    return name


def loaded_versions(model: nn.Module) -> dict[str, tuple]:
    """Adapter name -> the version `load_registered` loaded under it (kept on the model object)."""
    if not hasattr(model, "_loraforge_versions"):
        model._loraforge_versions = {}
    return model._loraforge_versions


def _version(folder: str) -> tuple:
    try:
        stat = (Path(folder) / WEIGHTS_FILE).stat()
    except OSError:
        return (folder, None, None)
    return (folder, stat.st_size, stat.st_mtime_ns)


def _find(reference: str, adapters: list[dict]) -> dict:
    if not reference:
        raise ContenderError(f"An entry of the set has no adapter name; write name:weight pairs, e.g. {SET_EXAMPLE}.")
    matches = [a for a in adapters if reference in (a["name"], a["run_id"], str(a["id"]))]
    if len(matches) > 1:
        ids = ", ".join(str(a["id"]) for a in matches)
        raise ContenderError(f"Several adapters are called {reference!r} (ids {ids}); write the id instead, "
                             f"e.g. {matches[0]['id']}:0.5.")
    if not matches:
        known = ", ".join(sorted({a["name"] for a in adapters}))
        raise ContenderError(f"No adapter is called {reference!r}. Registered adapters: {known}. "
                             f"Write name:weight pairs, e.g. {SET_EXAMPLE}.")
    return matches[0]


def _weight(text: str, reference: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise ContenderError(f"The weight of {reference!r} is {text!r}, not a number; write e.g. "
                             f"{reference}:0.5.") from None
    if not math.isfinite(weight) or weight == 0:
        raise ContenderError(f"The weight of {reference!r} is {text}; use a finite number other than 0 "
                             f"(leave an adapter out to switch it off).")
    return weight
