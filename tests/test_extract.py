"""Extracting an adapter from a full fine-tune (issue 30), on a tiny random Llama and a "tuned" copy whose q and v
projections changed by a known rank-2 update plus a little noise, saved as a sharded checkpoint."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.cli import main
from core.lora.errors import AdapterConfigError
from core.lora.extract import INDEX_FILE, extract_from_checkpoints
from core.store.database import Store
from tests.export_helpers import make_fine_tuned_copy
from tests.tiny_models import make_tiny_gpt2, make_tiny_llama

NOISE = 1e-5
TRUE_RANK = 2


@pytest.fixture(scope="module")
def tuned_dir(tiny_llama_dir, tmp_path_factory):
    # sharded: the extraction streams through the index
    folder = make_fine_tuned_copy(tiny_llama_dir, tmp_path_factory.mktemp("tuned"), rank=TRUE_RANK, noise=NOISE,
                                  max_shard_size="40KB")
    assert (folder / INDEX_FILE).is_file()
    return folder


def deltas(base, tuned) -> dict[str, torch.Tensor]:
    first = AutoModelForCausalLM.from_pretrained(base).state_dict()
    second = AutoModelForCausalLM.from_pretrained(tuned).state_dict()
    return {key.removesuffix(".weight"): second[key] - first[key] for key in first
            if key.endswith(("q_proj.weight", "v_proj.weight"))}


def test_extraction_at_the_true_rank_reproduces_the_tuned_model(loraforge_home, tiny_llama_dir, tuned_dir, capsys):
    assert main(["adapters", "extract", "--base", str(tiny_llama_dir), "--tuned", str(tuned_dir), "--rank", "2",
                 "--targets", "q_proj,v_proj", "--name", "extracted-2"]) == 0
    out = capsys.readouterr()
    final = json.loads(out.out.strip().splitlines()[-1])
    assert final["adapter"]["source"] == "extracted" and final["adapter"]["rank"] == 2
    assert final["extraction"]["max_relative_error"] < 1e-3  # only the noise is left out
    assert set(final["extraction"]["other_changes"]) == {"model.norm.weight"}
    assert final["parity"]["greedy_matches"] == final["parity"]["prompts"] == 3
    assert final["parity"]["max_logit_diff"] < 1e-3 * max(final["parity"]["logit_scale"], 1)
    assert "of the change lies outside the targeted layers (model.norm.weight)" in out.out
    with Store() as store:
        [adapter] = store.adapters()
    assert adapter["name"] == "extracted-2" and adapter["targets"] == ["q_proj", "v_proj"]


def test_a_lower_rank_reports_the_error_the_singular_values_predict(tiny_llama_dir, tuned_dir, tmp_path):
    report = extract_from_checkpoints(tiny_llama_dir, tuned_dir, tmp_path / "r1", rank=1, targets=["q_proj", "v_proj"])
    for path, delta in deltas(tiny_llama_dir, tuned_dir).items():
        s = torch.linalg.svdvals(delta.double())
        assert report.layers[path].rank == 1
        assert report.layers[path].relative_error == pytest.approx(float(s[1:].norm() / s.norm()), rel=1e-4)
        assert 0.3 < report.layers[path].relative_error < 1


def test_a_full_rank_extraction_is_exact_and_energy_picks_per_layer_ranks(tiny_llama_dir, tuned_dir, tmp_path):
    full = extract_from_checkpoints(tiny_llama_dir, tuned_dir, tmp_path / "full", rank=4096, targets="qv")
    assert full.max_relative_error < 1e-5
    kept = extract_from_checkpoints(tiny_llama_dir, tuned_dir, tmp_path / "auto", energy=0.999, targets="qv")
    assert {layer.rank for layer in kept.layers.values()} <= {1, TRUE_RANK}
    assert all(layer.energy_kept >= 0.999 for layer in kept.layers.values())
    config = json.loads((tmp_path / "auto" / "adapter_config.json").read_text())
    for path, layer in kept.layers.items():
        rank = config["rank_pattern"].get(path, config["r"])
        assert rank == layer.rank and config["alpha_pattern"].get(path, config["lora_alpha"]) == rank


def test_unchanged_and_mismatched_models_are_refused_by_name(tiny_llama_dir, tmp_path):
    with pytest.raises(AdapterConfigError, match="No targeted layer differs"):
        extract_from_checkpoints(tiny_llama_dir, tiny_llama_dir, tmp_path / "same", rank=4)
    other = make_tiny_llama(tmp_path / "other", hidden_size=32, intermediate_size=64)
    with pytest.raises(AdapterConfigError, match="differ in hidden_size"):
        extract_from_checkpoints(tiny_llama_dir, other, tmp_path / "x", rank=4)
    gpt2 = make_tiny_gpt2(tmp_path / "gpt2")
    with pytest.raises(AdapterConfigError, match="differ in model_type"):
        extract_from_checkpoints(tiny_llama_dir, gpt2, tmp_path / "y", rank=4)
    for rank, energy, message in ((None, None, "either a rank"), (0, None, "use 1 to"), (None, 1.5, "at most 1")):
        with pytest.raises(AdapterConfigError, match=message):
            extract_from_checkpoints(tiny_llama_dir, tiny_llama_dir, tmp_path / "z", rank=rank, energy=energy)
    assert not (tmp_path / "z").exists()


def test_the_cli_names_a_bad_rank_choice(loraforge_home, tiny_llama_dir, capsys):
    for rank, extra, message in (("auto", [], "A rank of 'auto' needs an energy share"),
                                 ("x", [], "neither a whole number"),
                                 ("8", ["--energy", "0.9"], "An energy share goes with the rank 'auto'")):
        assert main(["adapters", "extract", "--base", str(tiny_llama_dir), "--tuned", str(tiny_llama_dir),
                     "--rank", rank, *extra, "--name", "n"]) == 2
        assert message in capsys.readouterr().err


def test_the_page_extracts_as_a_background_job(loraforge_home, tiny_llama_dir, tuned_dir):
    """The Adapters tab's "Extract" starts a job like an export: a detached process whose row says what it did."""
    from core.export.extraction import EXTRACTED
    from core.export.jobs import ExportRequest, start
    from tests.job_helpers import wait_for

    export_id = start(ExportRequest([], EXTRACTED, base=str(tiny_llama_dir), tuned=str(tuned_dir), name="bg",
                                    energy=0.999))
    with Store() as store:
        row = wait_for(lambda: (found := store.get_export(export_id))["status"] != "running" and found, timeout=240)
        assert row["status"] == "done", row["error"]
        [adapter] = store.adapters()
    assert (adapter["name"], adapter["source"], row["adapter_id"]) == ("bg", "extracted", adapter["id"])
    assert row["parity"]["extraction"]["max_relative_error"] < 1e-2
    with pytest.raises(Exception, match="already exists"):
        start(ExportRequest([], EXTRACTED, base=str(tiny_llama_dir), tuned=str(tuned_dir), name="bg", rank=2))


STREAMED = """
import json, sys
from pathlib import Path
import torch, transformers  # the runtime, loaded before the baseline
from core.lora.extract import extract_from_checkpoints

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) * 1024

baseline = status("VmRSS:")
extract_from_checkpoints(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), rank=4)
print(json.dumps({"extra_bytes": status("VmHWM:") - baseline}))
"""


def test_a_sharded_extraction_streams_instead_of_loading_both_models(tmp_path):
    """Two 33 M-parameter checkpoints (134 MB each in fp32): the extraction's memory above its runtime stays
    under one copy, where loading both models would need two."""
    import subprocess
    import sys

    base = make_tiny_llama(tmp_path / "base", hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                           num_attention_heads=8, num_key_value_heads=8)
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("v_proj"):
                module.weight += 0.01
    model.save_pretrained(tmp_path / "tuned", max_shard_size="20MB")
    one_copy = sum(p.numel() * 4 for p in model.parameters())
    del model
    assert one_copy > 120e6 and (tmp_path / "tuned" / INDEX_FILE).is_file()
    done = subprocess.run([sys.executable, "-c", STREAMED, str(base), str(tmp_path / "tuned"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, check=True)
    extra = json.loads(done.stdout.strip().splitlines()[-1])["extra_bytes"]
    assert extra < one_copy, (extra, one_copy)
