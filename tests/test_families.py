"""Every model family end to end on tiny random models: train with the default preset (fp32 and QLoRA), chat,
merge to a folder plain transformers loads, and the adapter read by PEFT with the same logits.

Phi-3 computes q, k and v in one fused layer: the presets put the adapter on that layer (`qkv_proj`), as PEFT
does when told that name.
"""

import dataclasses
import json
import math

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.chat.generate import Sampling, conversation, stream_reply
from core.export.exporter import export_adapters
from core.export.gguf import GgufExportError
from core.lora.model import LoraSettings, add_adapter
from core.lora.peft_format import load_adapter, save_adapter
from core.training.loop import train
from tests.export_helpers import make_adapter
from tests.job_helpers import tiny_config
from tests.lora_helpers import load
from tests.tiny_models import FAMILIES, make_tiny_family

peft = pytest.importorskip("peft")

IDS = torch.tensor([[1, 17, 42, 99, 7, 230, 5, 64, 3, 150]])
QV_LAYERS = {"phi3": {"qkv_proj"}}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: make_tiny_family(root / family, family) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_trains_chats_merges_and_reads_in_peft(family, family_dirs, tmp_path):
    base = family_dirs[family]
    result = train(tiny_config(base, tmp_path, steps=3, name=family), tmp_path / "run")
    assert result.status == "completed" and math.isfinite(result.train_loss)
    adapter = tmp_path / "run" / "adapter"
    targets = set(json.loads((adapter / "adapter_config.json").read_text())["target_modules"])
    assert targets == QV_LAYERS.get(family, {"q_proj", "v_proj"})

    ours = load(base)
    load_adapter(ours, adapter)
    with torch.no_grad():
        our_logits = ours(IDS).logits
        theirs = peft.PeftModel.from_pretrained(load(base), adapter).eval()
        torch.testing.assert_close(theirs(IDS).logits, our_logits, rtol=0, atol=1e-5)

    *_, reply = stream_reply(ours, AutoTokenizer.from_pretrained(base), conversation("hi"),
                             Sampling(max_new_tokens=6, temperature=0))
    assert isinstance(reply, str)

    merged = export_adapters([str(adapter)], "merged", tmp_path / "merged", base=str(base))
    assert merged.status == "done" and merged.parity["passed"]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(IDS).logits, our_logits, rtol=0, atol=1e-4)
    assert AutoTokenizer.from_pretrained(tmp_path / "merged").chat_template


@pytest.mark.parametrize("family", FAMILIES)
def test_every_preset_finds_its_layers_and_qlora_trains(family, family_dirs, tmp_path):
    base = family_dirs[family]
    for preset in ("qv", "attention", "mlp", "all-linear"):
        report = add_adapter(load(base), preset, LoraSettings(r=2, targets=preset))
        assert report.modules and report.trainable > 0, preset
    config = dataclasses.replace(tiny_config(base, tmp_path, steps=2, name=f"{family}-nf4"), quant="nf4")
    result = train(config, tmp_path / "run")
    assert result.status == "completed" and math.isfinite(result.train_loss)


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3"])
def test_gguf_export_of_a_family_reads_back_in_transformers(family, family_dirs, tmp_path):
    base = family_dirs[family]
    adapter = make_adapter(base, tmp_path / "adapter", std=0.05)  # as the Llama GGUF tests do
    result = export_adapters([str(adapter)], "gguf", tmp_path / "gguf", base=str(base), gguf_type="f16")
    check = result.parity["checks"][0]
    assert result.status == "done" and check["greedy_agree"] and check["max_logit_diff"] < 0.05
    arch = gguf.GGUFReader(str(next((tmp_path / "gguf").glob("*.gguf")))).fields["general.architecture"].contents()
    assert arch == {"mistral": "llama"}.get(family, family)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "phi3"])
def test_gguf_export_of_a_family_not_yet_written_is_refused_with_the_way_out(family, family_dirs, tmp_path):
    model = load(family_dirs[family])
    add_adapter(model, "a", LoraSettings(r=2))
    adapter = save_adapter(model, "a", tmp_path / "adapter")
    with pytest.raises(GgufExportError, match="convert_hf_to_gguf.py"):
        export_adapters([str(adapter)], "gguf", tmp_path / "gguf", base=str(family_dirs[family]))
    assert not (tmp_path / "gguf").exists()
