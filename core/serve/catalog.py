"""What a request's `model` names: the base ("base", or the base's own name), one registered adapter (name, run
id or id), or a weighted set written as in the Chat tab ("pirate:0.7,dates:0.5"). Read from the store on every
request, so an adapter registered while the server runs is served at once and a deleted one is refused.
"""

import time
from datetime import datetime

from core.chat.contenders import BASE_CHOICE, ContenderError, parse_set
from core.serve.errors import ApiError
from core.store.database import Store

SET_EXAMPLE = "pirate:0.7,dates:0.5"


def resolve(model: str, base_name: str) -> tuple[tuple[dict, float], ...]:
    """(store row, weight) for each adapter `model` names; () for the base. 404 in OpenAI's shape otherwise."""
    if model in (BASE_CHOICE, base_name):
        return ()
    with Store() as store:
        adapters = store.adapters()
    named = [adapter for adapter in adapters if adapter["name"] == model]
    if len(named) == 1:  # a whole name first: "pirate:v2" is that adapter, not a weighted set
        return ((named[0], 1.0),)
    try:
        contender = parse_set(model, adapters)
    except ContenderError as error:
        known = ", ".join(entry["id"] for entry in listing(adapters, base_name))
        raise ApiError(f"The model {model!r} does not exist: {error} Models here: {known}, or a weighted set of "
                       f"adapters such as {SET_EXAMPLE}.", status=404, code="model_not_found", param="model") from None
    rows = {adapter["id"]: adapter for adapter in adapters}
    return tuple((rows[adapter_id], weight) for adapter_id, weight in contender.weights)


def models(base_name: str) -> list[dict]:
    """The /v1/models entries: the base, then every registered adapter."""
    with Store() as store:
        return listing(store.adapters(), base_name)


def listing(adapters: list[dict], base_name: str) -> list[dict]:
    """An adapter is listed by its name where that name resolves to it alone, else by its id (a name shared by
    several adapters, one that looks like an id or a run id, or one the base's names would shadow)."""
    counts: dict[str, int] = {}
    for adapter in adapters:
        counts[adapter["name"]] = counts.get(adapter["name"], 0) + 1
    taken = {BASE_CHOICE, base_name} | {str(a["id"]) for a in adapters} | {a["run_id"] for a in adapters if a["run_id"]}
    entries = [{"id": BASE_CHOICE, "object": "model", "created": int(time.time()), "owned_by": "loraforge",
                "root": base_name}]
    for adapter in reversed(adapters):  # oldest first
        name = adapter["name"]
        listed = name if counts[name] == 1 and name not in taken else str(adapter["id"])
        created = int(datetime.fromisoformat(adapter["created"]).timestamp())
        entries.append({"id": listed, "object": "model", "created": created, "owned_by": "loraforge",
                        "root": base_name, "parent": BASE_CHOICE})
    return entries
