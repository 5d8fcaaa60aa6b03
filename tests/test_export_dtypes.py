"""The precision of a merged export's weights: by default the base's own, or the one asked for, each checked
against the live fp32 adapter with the tolerance its rounding allows."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.cli import main
from core.export.exporter import export_adapters
from core.export.output import ExportError
from core.export.parity import compare_outputs, model_outputs
from core.store.database import Store
from tests.export_helpers import live_logits, make_adapter
from tests.tiny_models import make_tiny_llama

REPO = Path(__file__).resolve().parents[1]
IDS = torch.tensor([[1, 17, 42, 99, 7, 230, 5, 64, 3, 150]])


def stored_dtypes(folder) -> set[torch.dtype]:
    with safe_open(folder / "model.safetensors", framework="pt") as weights:
        return {weights.get_tensor(key).dtype for key in weights.keys()}


@pytest.fixture(scope="module")
def bf16_base(tmp_path_factory):
    """A tiny Llama stored in bf16 (as most published models are), with an adapter trained on it."""
    folder = make_tiny_llama(tmp_path_factory.mktemp("bf16") / "tiny-bf16")
    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(folder)
    return folder, make_adapter(folder, tmp_path_factory.mktemp("adapters") / "adapter")


def test_auto_keeps_the_precision_the_base_is_stored_in(bf16_base, tmp_path):
    base, adapter = bf16_base
    auto = export_adapters([str(adapter)], "merged", tmp_path / "auto", base=str(base))
    full = export_adapters([str(adapter)], "merged", tmp_path / "fp32", base=str(base), merged_dtype="fp32")

    assert stored_dtypes(tmp_path / "auto") == {torch.bfloat16}
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["dtype"] == "bfloat16"
    assert stored_dtypes(tmp_path / "fp32") == {torch.float32}
    weights = [(tmp_path / name / "model.safetensors").stat().st_size for name in ("auto", "fp32")]
    assert 0.45 < weights[0] / weights[1] < 0.55
    assert auto.status == full.status == "done"
    bf16_check, fp32_check = auto.parity["checks"][0], full.parity["checks"][0]
    assert 0 < fp32_check["max_logit_diff"] < 1e-4 < bf16_check["max_logit_diff"] < bf16_check["tolerance"]

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "auto", dtype=torch.float32).eval()
    with torch.no_grad():
        got = reloaded(IDS).logits
    live = live_logits(base, {adapter: 1.0}, IDS)
    scale = float(live.abs().max())
    assert float((got - live).abs().max()) < 0.05 * scale  # what the parity check promises, checked here directly


def test_auto_reads_a_hub_id_bases_precision_from_the_cache_offline(bf16_base, tmp_path):
    """A base named by hub id ("org/name") is read from the Hugging Face cache on a machine without network;
    "auto" must find its stored precision there too, as the folder base above does."""
    base, adapter = bf16_base
    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-bf16" / "snapshots" / "0123abcd"
    shutil.copytree(base, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    merged = subprocess.run(
        [sys.executable, "launch.py", "merge", "--adapter", str(adapter), "--base", "tiny-org/tiny-bf16",
         "--out", str(tmp_path / "merged")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )

    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout.strip().splitlines()[-1])["status"] == "done"
    assert stored_dtypes(tmp_path / "merged") == {torch.bfloat16}


def test_an_fp32_base_exports_fp32_unless_told_and_the_cli_takes_dtype(tiny_llama_dir, tmp_path, capsys):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    export_adapters([str(adapter)], "merged", tmp_path / "auto", base=str(tiny_llama_dir))
    assert main(["merge", "--adapter", str(adapter), "--base", str(tiny_llama_dir), "--dtype", "fp16",
                 "--out", str(tmp_path / "fp16")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert stored_dtypes(tmp_path / "auto") == {torch.float32}
    assert stored_dtypes(tmp_path / "fp16") == {torch.float16}
    assert result["status"] == "done" and result["parity"]["checks"][0]["greedy_agree"]


def test_an_unknown_precision_names_the_choices_and_writes_nothing(tiny_llama_dir, tmp_path, capsys):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    with pytest.raises(ExportError, match="Unknown precision 'int4' for a merged export. Choose one of: auto, fp32"):
        export_adapters([str(adapter)], "merged", tmp_path / "out", base=str(tiny_llama_dir), merged_dtype="int4")
    with pytest.raises(ExportError, match=r"A precision \(bf16\) applies to merged exports only.*--gguf-type"):
        export_adapters([str(adapter)], "gguf", tmp_path / "out", base=str(tiny_llama_dir), merged_dtype="bf16")
    with pytest.raises(SystemExit) as exited:
        main(["merge", "--adapter", str(adapter), "--dtype", "fp8", "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    assert "invalid choice: 'fp8'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and Store().exports() == []


def test_weights_beyond_fp16s_range_are_refused_not_written_as_inf(tiny_llama_dir, tmp_path):
    huge = make_adapter(tiny_llama_dir, tmp_path / "huge", std=300.0)  # merged entries far above 65504
    with pytest.raises(ExportError, match=r"does not fit in fp16 .* Export it in bf16 or fp32"):
        export_adapters([str(huge)], "merged", tmp_path / "out", base=str(tiny_llama_dir), merged_dtype="fp16")
    assert not (tmp_path / "out").exists() and Store().exports() == []
    export_adapters([str(huge)], "merged", tmp_path / "bf16", base=str(tiny_llama_dir), merged_dtype="bf16")
    assert stored_dtypes(tmp_path / "bf16") == {torch.bfloat16}  # bf16 has fp32's range


def test_nan_logits_fail_the_parity_check(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    reference = model_outputs(model, tokenizer)
    broken = replace(reference, logits=[torch.full_like(logits, float("nan")) for logits in reference.logits])
    check = compare_outputs(reference, broken, "merged", 0.05, greedy_required=False)
    assert not check.passed and "logits differ by up to nan" in check.problems[0]
