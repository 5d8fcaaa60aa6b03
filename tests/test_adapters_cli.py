"""`launch.py adapters inspect DIR`: a summary read from the files alone, and a clear error for a bad folder."""

import transformers

from app.cli import main
from core.adapters import LoraSettings, add_adapter
from core.peft_format import save_adapter
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


def test_inspect_of_a_folder_without_adapter_exits_2_with_the_fix(tmp_path, capsys):
    assert main(["adapters", "inspect", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "adapter_config.json" in error and "not a PEFT adapter folder" in error
