"""PEFT-format files: round trip, lenient reading, and every bad input refused with nothing half-applied."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.lora.base_identity import FINGERPRINT_KEY, SUMMARY_KEY
from core.lora.errors import AdapterFileError
from core.lora.model import LoraSettings, adapter_names, add_adapter, lora_layers, unload
from core.lora.peft_format import CONFIG_FILE, WEIGHTS_FILE, inspect_adapter, load_adapter, peft_key, save_adapter
from tests.lora_helpers import assert_same_state, load, logits, randomize, state_snapshot

Q0 = "model.layers.0.self_attn.q_proj"


@pytest.fixture
def saved(tiny_llama_dir, tmp_path):
    """A saved, non-zero r=4 adapter on q/v of the tiny Llama, and the logits it produces."""
    model = load(tiny_llama_dir)
    add_adapter(model, "default", LoraSettings(r=4, alpha=8))
    randomize(model, "default")
    save_adapter(model, "default", tmp_path / "adapter")
    return tmp_path / "adapter", logits(model)


def rewrite(folder, tensors=None, config=None):
    if tensors is not None:
        save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})
    if config is not None:
        (folder / CONFIG_FILE).write_text(json.dumps(config))


def test_saved_files_follow_peft_layout(saved):
    folder, _ = saved
    tensors = load_file(folder / WEIGHTS_FILE)
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert tensors[peft_key(Q0, "lora_A")].shape == (4, 64)
    assert tensors[peft_key(Q0, "lora_B")].shape == (64, 4)
    assert peft_key(Q0, "lora_A") == f"base_model.model.{Q0}.lora_A.weight"
    assert len(tensors) == 8 and all(t.dtype == torch.float32 for t in tensors.values())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == ["q_proj", "v_proj"] and config["base_model_name_or_path"]
    from safetensors import safe_open

    with safe_open(folder / WEIGHTS_FILE, "pt") as handle:
        metadata = handle.metadata()  # PEFT's "format", and the base's identity (core.lora.base_identity)
    assert metadata["format"] == "pt" and set(metadata) == {"format", FINGERPRINT_KEY, SUMMARY_KEY}
    assert metadata[SUMMARY_KEY] == "llama, 2 layers, hidden 64, vocabulary 400"


def test_keys_without_prefix_and_unknown_config_keys_load(saved, tiny_llama_dir):
    folder, expected = saved
    tensors = {k.removeprefix("base_model.model."): v for k, v in load_file(folder / WEIGHTS_FILE).items()}
    config = json.loads((folder / CONFIG_FILE).read_text()) | {"some_future_option": {"x": 1}, "revision": None}
    rewrite(folder, tensors, config)
    model = load(tiny_llama_dir)
    load_adapter(model, folder)
    assert (logits(model) - expected).abs().max() < 1e-6


def test_inspect_reads_config_and_header_only(saved):
    info = inspect_adapter(saved[0])
    assert (info.ranks, info.alpha, info.targets, info.modules) == ([4], 8, ["q_proj", "v_proj"], 4)
    assert info.parameters == 2 * (4 * (64 + 64) + 4 * (64 + 32))
    assert info.size_bytes == (saved[0] / WEIGHTS_FILE).stat().st_size > info.parameters * 4


def corrupt_shape(tensors, config):
    tensors[peft_key(Q0, "lora_B")] = torch.zeros(32, 4)


def corrupt_module(tensors, config):
    for field in ("lora_A", "lora_B"):
        tensors[peft_key("model.layers.7.self_attn.q_proj", field)] = tensors[peft_key(Q0, field)].clone()


def corrupt_nan(tensors, config):
    tensors[peft_key("model.layers.1.self_attn.v_proj", "lora_A")][0, 0] = float("nan")


def corrupt_inf(tensors, config):
    tensors[peft_key(Q0, "lora_B")][3, 1] = float("-inf")


def corrupt_missing_b(tensors, config):
    del tensors[peft_key(Q0, "lora_B")]


def corrupt_rank(tensors, config):
    config["r"] = 8


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (corrupt_shape, r"q_proj.lora_B.weight.*shape \(32, 4\).*needs \(64, 4\)"),
        (corrupt_module, r"targets module 'model.layers.7.self_attn.q_proj'"),
        (corrupt_nan, r"layers.1.self_attn.v_proj.lora_A.weight.*NaN or Inf"),
        (corrupt_inf, r"q_proj.lora_B.weight.*NaN or Inf"),
        (corrupt_missing_b, r"has no base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"),
        (corrupt_rank, r"r=8\) needs \(8, 64\)"),
    ],
)
def test_bad_adapter_is_refused_and_model_untouched(saved, tiny_llama_dir, corrupt, message):
    folder, _ = saved
    tensors = load_file(folder / WEIGHTS_FILE)
    config = json.loads((folder / CONFIG_FILE).read_text())
    corrupt(tensors, config)
    rewrite(folder, tensors, config)
    model = load(tiny_llama_dir)
    add_adapter(model, "existing", LoraSettings(targets="mlp"))
    before, before_logits = state_snapshot(model), logits(model)

    with pytest.raises(AdapterFileError, match=message):
        load_adapter(model, folder, "incoming")

    assert_same_state(before, model)
    assert adapter_names(model) == ["existing"]
    assert not any(".self_attn." in path for path in lora_layers(model))  # no wrapper left on q/v
    assert torch.equal(logits(model), before_logits)


def test_truncated_safetensors_names_the_file(saved, tiny_llama_dir):
    folder, _ = saved
    weights = folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])
    model = load(tiny_llama_dir)
    before = state_snapshot(model)
    with pytest.raises(AdapterFileError, match=f"{WEIGHTS_FILE}.*truncated or corrupt"):
        load_adapter(model, folder)
    with pytest.raises(AdapterFileError, match="truncated or corrupt"):
        inspect_adapter(folder)
    assert_same_state(before, model)
    assert not lora_layers(model)


def test_folder_without_config_explains_what_is_needed(tmp_path, tiny_llama_dir):
    model = load(tiny_llama_dir)
    with pytest.raises(AdapterFileError, match=f"no {CONFIG_FILE}.*not a PEFT adapter folder"):
        load_adapter(model, tmp_path)
    assert not lora_layers(model)


def test_loading_under_a_taken_name_changes_nothing(saved, tiny_llama_dir):
    from core.lora.errors import AdapterConfigError

    model = load(tiny_llama_dir)
    load_adapter(model, saved[0], "mine")
    before = state_snapshot(model)
    with pytest.raises(AdapterConfigError, match="already has an adapter named 'mine'"):
        load_adapter(model, saved[0], "mine")
    assert_same_state(before, model)
    assert unload(model) is model and not lora_layers(model)
