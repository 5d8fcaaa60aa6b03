"""`launch.py adapters inspect ADAPTER`: a summary read from the files alone (of a folder, or of a registered adapter
named as `adapters list` shows it), and a clear error for a bad folder."""

import transformers

from app.cli import main
from core.lora.model import LoraSettings, add_adapter
from core.lora.peft_format import save_adapter
from tests.lora_helpers import load


def test_inspect_prints_base_rank_alpha_targets_count_and_size(tiny_gpt2_dir, tmp_path, capsys, monkeypatch):
    model = load(tiny_gpt2_dir)
    add_adapter(model, "default", LoraSettings(r=4, alpha=16, targets="attention", rank_pattern={"c_proj": 2}))
    save_adapter(model, "default", tmp_path, base_model_name="openai-community/gpt2")

    def no_model_loading(*args, **kwargs):
        raise AssertionError("inspect must not load a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model_loading)
    assert main(["adapters", "inspect", str(tmp_path)]) == 0
    lines = {line[:11].strip(): line[12:] for line in capsys.readouterr().out.splitlines()}
    assert lines["base model"] == "openai-community/gpt2"
    assert lines["rank"] == "2, 4"
    assert lines["alpha"] == "16"
    assert lines["targets"] == "attn.c_attn, attn.c_proj (4 modules)"
    assert lines["parameters"] == f"{2 * (4 * (64 + 192) + 2 * (64 + 64)):,}"
    assert lines["size"].endswith("KB")

    main(["adapters", "import", str(tmp_path)])
    capsys.readouterr()
    assert main(["adapters", "inspect", tmp_path.name]) == 0  # by its registered name, as other verbs take it
    assert f"adapter     {tmp_path}" in capsys.readouterr().out


def test_inspect_of_a_folder_without_adapter_exits_2_with_the_fix(tmp_path, capsys):
    assert main(["adapters", "inspect", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "adapter_config.json" in error and "not a PEFT adapter folder" in error



def test_inspect_and_import_name_a_missing_path_and_a_zip_for_what_they_are(tmp_path, capsys):
    (tmp_path / "adapter.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip archive, as exports write them
    for action in ("inspect", "import"):
        assert main(["adapters", action, str(tmp_path / "missing")]) == 2
        assert "missing does not exist. Check the path" in capsys.readouterr().err
        assert main(["adapters", action, str(tmp_path / "adapter.zip")]) == 2
        assert "is a zip file. Unzip it and point to the folder inside" in capsys.readouterr().err
