"""The contender selector of a chat column or a blind A/B slot: the base model, any registered adapter, or a
weighted set typed as `pirate:0.7, dates:0.5` in a box that shows only when "Weighted set" is chosen."""

from dataclasses import dataclass

import gradio as gr

from app.web.refusal import refusal
from core.chat.contenders import BASE_CHOICE, SET_CHOICE, SET_EXAMPLE, Contender, choose, model_gains
from core.errors import LoraForgeError
from core.models.loading import LoadedModel
from core.store.database import Store

BASE_OPTION = ("Base model", BASE_CHOICE)
SET_OPTION = ("Weighted set of adapters…", SET_CHOICE)


@dataclass
class Picker:
    """One selector's components; `label` starts its error messages, so the user knows which one to fix."""

    label: str
    choice: gr.Dropdown
    weights: gr.Textbox


def build_picker(label: str, elem_id: str) -> Picker:
    """A dropdown `#<elem_id>-model` and its weighted-set box `#<elem_id>-set`."""
    choice = gr.Dropdown([BASE_OPTION, SET_OPTION], value=BASE_CHOICE, label=label, elem_id=f"{elem_id}-model")
    weights = gr.Textbox(label="Weighted set (adapter:weight, …; a name, run id or adapter id)",
                         placeholder=SET_EXAMPLE, visible=False, elem_id=f"{elem_id}-set")
    choice.change(lambda value: gr.Textbox(visible=value == SET_CHOICE), choice, weights, queue=False,
                  show_progress="hidden")
    return Picker(label, choice, weights)


def picker_options(store: Store) -> list[tuple[str, str]]:
    """What a selector offers now: the base, every registered adapter (newest first), a weighted set."""
    adapters = [(f"{a['name']} · r{a['rank']} · {a['run_id'] or a['source']}", str(a["id"])) for a in store.adapters()]
    return [BASE_OPTION, *adapters, SET_OPTION]


def picker_inputs(pickers: list[Picker]) -> set:
    """The components `resolve` reads, as a generating event's inputs."""
    return {component for picker in pickers for component in (picker.choice, picker.weights)}


def resolve(loaded: LoadedModel, store: Store, pickers: list[Picker], data: dict) -> list[tuple[Contender, dict]]:
    """Each picker's contender and its active set, all checked (adapters loaded) before any of them answers."""
    adapters = store.adapters()
    resolved = []
    for picker in pickers:
        try:
            contender = choose(data[picker.choice], data[picker.weights], adapters)
            resolved.append((contender, model_gains(loaded.model, contender, adapters)))
        except LoraForgeError as error:
            raise refusal(f"{picker.label}: {error}") from None
    return resolved
