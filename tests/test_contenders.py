"""Chat contenders: the base, one adapter, or a typed weighted set parsed against the registered adapters, with a
message that names the problem and the fix for every bad set; and their adapters loaded once into one base."""

import pytest
import torch

from core.chat.contenders import BASE, ContenderError, choose, model_gains, parse_set
from core.lora.model import active_adapters, adapter_names
from core.models.loading import load_base_model
from tests.export_helpers import make_adapter

ADAPTERS = [
    {"id": 1, "name": "pirate", "run_id": "r-20260101-000000-aaaa", "path": "/a/pirate"},
    {"id": 2, "name": "dates", "run_id": None, "path": "/a/dates"},
    {"id": 3, "name": "dates", "run_id": None, "path": "/b/dates"},
]


def test_a_set_names_adapters_by_name_run_id_or_id_and_a_bare_name_weighs_1():
    blend = parse_set(" pirate:0.7 , 2:-0.5,tone", [*ADAPTERS[:2], {**ADAPTERS[2], "name": "tone"}])
    assert blend.weights == ((1, 0.7), (2, -0.5), (3, 1.0))
    assert blend.label == "pirate ×0.7 + dates ×-0.5 + tone ×1"
    assert parse_set("r-20260101-000000-aaaa:2", ADAPTERS).weights == ((1, 2.0),)


@pytest.mark.parametrize("text, message", [
    ("", "Type a weighted set of adapters first, e.g. pirate:0.7"),
    ("pyrate:0.5", "No adapter is called 'pyrate'. Registered adapters: dates, pirate."),
    ("dates:0.5", "Several adapters are called 'dates' (ids 2, 3); write the id instead, e.g. 2:0.5."),
    ("pirate:lots", "The weight of 'pirate' is 'lots', not a number; write e.g. pirate:0.5."),
    ("pirate:0", "use a finite number other than 0"),
    ("pirate:nan", "use a finite number other than 0"),
    ("pirate:1, 1:0.5", "'1' appears twice"),
    (":0.5", "An entry of the set has no adapter name"),
])
def test_a_bad_set_says_what_is_wrong_and_how_to_write_it(text, message):
    with pytest.raises(ContenderError) as error:
        parse_set(text, ADAPTERS)
    assert message in str(error.value)


def test_choose_base_one_adapter_or_a_set():
    assert choose("base", "ignored", ADAPTERS) is BASE
    assert choose("1", "", ADAPTERS).weights == ((1, 1.0),) and choose("1", "", ADAPTERS).label == "pirate"
    assert choose("set", "pirate:0.5", ADAPTERS).label == "pirate ×0.5"
    with pytest.raises(ContenderError, match="no longer registered"):
        choose("9", "", ADAPTERS)
    with pytest.raises(ContenderError, match="No adapters are registered yet"):
        choose("set", "pirate", [])


def test_adapters_load_once_into_the_one_base_and_the_set_changes_the_output(tiny_llama_dir, tmp_path):
    adapters = [{"id": 1, "name": "pirate", "run_id": None, "path": str(make_adapter(tiny_llama_dir, tmp_path / "p"))},
                {"id": 2, "name": "dates", "run_id": None,
                 "path": str(make_adapter(tiny_llama_dir, tmp_path / "d", seed=1))}]
    loaded = load_base_model(str(tiny_llama_dir), dtype="fp32")
    ids = torch.tensor([[1, 2, 3, 4]])
    blend = parse_set("pirate:0.7, dates:0.5", adapters)
    assert model_gains(loaded.model, BASE, adapters) == {}
    gains = model_gains(loaded.model, blend, adapters)
    assert gains == {"adapter-1": 0.7, "adapter-2": 0.5}
    assert model_gains(loaded.model, choose("1", "", adapters), adapters) == {"adapter-1": 1.0}
    assert adapter_names(loaded.model) == ["adapter-1", "adapter-2"]  # loaded once each, not per call
    with torch.no_grad(), active_adapters(loaded.model, {}):
        base_logits = loaded.model(ids).logits
    with torch.no_grad(), active_adapters(loaded.model, gains):
        assert not torch.allclose(loaded.model(ids).logits, base_logits)

    broken = [{**adapters[0], "id": 7, "path": str(tmp_path / "gone")}]
    with pytest.raises(ContenderError, match="Cannot load adapter pirate"):
        model_gains(loaded.model, choose("7", "", broken), broken)
