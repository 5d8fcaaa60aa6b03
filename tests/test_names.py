"""Every name a person types becomes a path through core.paths.named_path: a run name used to name a saved config
wrote `../../outside/x.yaml`, absolute paths and `/.yaml` (security probe 2.12)."""

import gradio as gr
import pytest

from app.web.train.form import form_values
from app.web.train.handlers import TrainHandlers
from core.paths import UnsafeName, named_path, slug
from core.training.config import TrainConfig

BAD_NAMES = ["../../outside/x", "/tmp/absolute", "/", "x/../../../t", "..", ".hidden", "a\\b", "tab\there", "",
             "   ", "x" * 121]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_would_leave_its_folder_is_refused_with_the_fix(tmp_path, name):
    with pytest.raises(UnsafeName, match="cannot be a file name in .* Use letters, digits"):
        named_path(tmp_path, name, ".yaml", what="The run name")


def test_ordinary_names_stay_in_their_folder(tmp_path):
    assert named_path(tmp_path, " pirate v2 ", ".yaml") == tmp_path / "pirate v2.yaml"
    assert named_path(tmp_path, "a;rm -rf x`id`$(id)") == tmp_path / "a;rm -rf x`id`$(id)"  # text, never run
    (tmp_path / "escape").symlink_to("/etc")
    with pytest.raises(UnsafeName, match="is a link out of"):
        named_path(tmp_path, "escape")
    assert slug("  pirate + dates!  ") == "pirate-dates" and slug("../..") == ""


def save_config(name: str) -> object:
    values = {**form_values(TrainConfig(name=name or None)), "base": "default", "dataset": ""}
    return TrainHandlers(None, None, list(values)).save_config(*values.values())


@pytest.mark.parametrize("name", ["../../outside/x", "/", "x/../../../t", "/tmp/abs"])
def test_save_config_as_yaml_writes_inside_the_configs_folder_only(loraforge_home, tmp_path, name):
    with pytest.raises(gr.Error, match="The run name .* cannot be a file name"):
        save_config(name)
    assert not list((loraforge_home / "configs").iterdir())
    assert not list(tmp_path.rglob("*.yaml"))
    assert save_config("good name").value["orig_name"] == "good name.yaml"
    assert [p.name for p in (loraforge_home / "configs").iterdir()] == ["good name.yaml"]
