"""The base-model picker's engine (core.models.discover, core.export.targets) and `launch.py models`: a folder of
tiny random models, a GGUF file, a broken config and links scanned from their metadata, within bounds."""

import json
import os

import gguf
import pytest
import torch

from app.cli import main
from core.export import gguf_families
from core.export.targets import MERGED_ONLY, base_model_rows
from core.models.discover import scan_models
from core.models.errors import ModelSourceError
from core.settings_file import SETTINGS_FILE, remember, remembered
from tests.tiny_models import make_tiny_family, make_tiny_gpt2, write_tiny_gguf


@pytest.fixture(scope="module")
def models_folder(tmp_path_factory):
    """llama, gemma2 and phi3 folders (phi3 two levels down), a GGUF of the llama and a truncated copy, a folder whose
    config.json is not JSON, a link loop back up, a link to itself and one leading out of the folder."""
    root = tmp_path_factory.mktemp("picker") / "models"
    make_tiny_family(root / "llama", "llama")
    make_tiny_family(root / "gemma2", "gemma2")
    make_tiny_family(root / "team" / "phi" / "phi3", "phi3")
    write_tiny_gguf(root / "llama", root / "tiny-llama.f16.gguf")
    (root / "cut.gguf").write_bytes((root / "tiny-llama.f16.gguf").read_bytes()[:300])  # a download cut short
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text('{"model_type": "llama",')
    (root / "broken" / "model.safetensors").write_bytes(b"\0" * 16)
    os.symlink("../..", root / "team" / "phi" / "up")  # a loop back to the folder itself
    os.symlink("itself", root / "itself")
    os.symlink(root.parent.parent, root / "outside")
    return root


def by_name(rows):
    return {row.name: row for row in rows}


def test_a_scan_lists_folders_and_gguf_files_with_family_size_and_what_will_work(models_folder):
    rows, notes = base_model_rows(models_folder)
    found = by_name(rows)
    assert sorted(found) == ["broken", "cut.gguf", "gemma2", "llama", "team/phi/phi3", "tiny-llama.f16.gguf"]

    llama = found["llama"]
    assert (llama.family, llama.train, llama.packing, llama.trainable) == ("llama", "yes", "per example", True)
    assert llama.size.startswith("0.1 M parameters · 0.") and llama.path == str(models_folder / "llama")
    assert llama.gguf.startswith("f16, bf16, q8_0")
    assert llama.qlora == ("yes" if torch.cuda.is_available() else "yes, on the CPU")

    gemma = found["gemma2"]
    assert gemma.family == "gemma2" and gemma.packing == "whole-row mask (logit soft-capping)"
    assert found["team/phi/phi3"].family == "phi3"

    gguf_row = found["tiny-llama.f16.gguf"]
    assert gguf_row.family == "llama" and gguf_row.train == "yes, converted to safetensors once"
    assert gguf_row.size.endswith("MB F16") and gguf_row.gguf == llama.gguf

    assert found["cut.gguf"].train == "no: not a readable GGUF file: its header is cut short or damaged"
    broken = found["broken"]
    assert not broken.trainable and broken.train.startswith("no: config.json is not valid JSON")
    assert broken.qlora == broken.packing == broken.gguf == ""

    assert "1 link(s) leading outside the folder were not followed." in notes
    assert any(note.startswith(f"Could not read {models_folder / 'itself'}") for note in notes)


def test_the_parameter_count_is_read_from_the_safetensors_header(models_folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models_folder / "llama")
    [found] = [m for m in scan_models(models_folder).models if m.path.name == "llama"]
    assert found.parameters == sum(p.numel() for p in model.parameters())
    assert found.weight_bytes == (models_folder / "llama" / "model.safetensors").stat().st_size


def test_a_gguf_header_gives_the_config_and_size_that_transformers_reads(models_folder):
    from transformers import AutoConfig

    from core.models.gguf_header import read_gguf_header

    path = models_folder / "tiny-llama.f16.gguf"
    header = read_gguf_header(path)
    assert header.parameters == sum(int(tensor.n_elements) for tensor in gguf.GGUFReader(str(path)).tensors)
    assert header.file_type() == "F16" and header.metadata["tokenizer.ggml.tokens"] == 400  # an array's length
    ours, theirs = header.config().to_dict(), AutoConfig.from_pretrained(models_folder, gguf_file=path.name).to_dict()
    differ = {key for key in ours.keys() | theirs.keys() if ours.get(key) != theirs.get(key)}
    assert differ <= {"_name_or_path", "_model_name_or_path", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                      "pad_token_id", "unk_token_id"}  # the model's shape and attention settings agree


def test_the_gguf_column_reads_the_exporters_families_when_asked(models_folder, tmp_path, monkeypatch):
    assert all(row.gguf.startswith("f16") for row in base_model_rows(models_folder)[0] if row.trainable)
    make_tiny_gpt2(tmp_path / "gpt2")
    assert base_model_rows(tmp_path)[0][0].gguf == MERGED_ONLY
    monkeypatch.setitem(gguf_families.FAMILIES, "gpt2", gguf_families.FAMILIES["llama"])  # a family added there
    assert base_model_rows(tmp_path)[0][0].gguf.startswith("f16")


def test_a_sliding_window_limits_per_example_packing_to_its_length(tmp_path):
    make_tiny_family(tmp_path / "gemma3", "gemma3")
    [row] = base_model_rows(tmp_path)[0]
    assert row.family == "gemma3_text"
    assert row.packing == "per example up to Max length 32 (a sliding window of 32 tokens)"


def test_the_walk_stops_at_its_depth_and_entry_limits(models_folder):
    shallow = scan_models(models_folder, max_depth=1)
    assert "team/phi/phi3" not in {str(m.path.relative_to(models_folder)) for m in shallow.models}
    assert "1 folder(s) more than 1 levels down were not searched." in shallow.notes
    few = scan_models(models_folder, max_entries=3)
    assert len(few.models) <= 3 and few.notes[0].startswith("Stopped after looking at 3 files and folders")


def test_pickle_weights_and_a_missing_tokenizer_are_named(tmp_path):
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\0")
    make_tiny_family(tmp_path / "bare", "llama")
    (tmp_path / "bare" / "tokenizer.json").unlink()
    found = by_name(base_model_rows(tmp_path)[0])
    assert found["pickled"].train == ("no: only pickle weights (pytorch_model.bin), never loaded; convert them to "
                                      "safetensors")
    assert found["bare"].train.startswith("no: no tokenizer files")


def test_a_folder_that_is_missing_or_a_file_is_refused_naming_the_fix(models_folder):
    with pytest.raises(ModelSourceError, match="does not exist. Check the path"):
        scan_models(models_folder / "nope")
    with pytest.raises(ModelSourceError, match=f"is a file, not a folder.*e.g. {models_folder}"):
        scan_models(models_folder / "tiny-llama.f16.gguf")


def test_the_cli_prints_the_same_rows(models_folder, capsys):
    assert main(["models", "--dir", str(models_folder), "--json"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == [row.as_dict() for row in base_model_rows(models_folder)[0]]
    assert main(["models", "--dir", str(models_folder)]) == 0
    out = capsys.readouterr()
    assert f"    --base {models_folder / 'llama'}" in out.out and "whole-row mask (logit soft-capping)" in out.out
    assert "note: 1 link(s) leading outside" in out.err
    assert main(["models", "--dir", str(models_folder / "nope")]) == 2


def test_a_remembered_choice_keeps_the_other_settings(loraforge_home):
    assert remembered("models_folder") == ""
    (loraforge_home / SETTINGS_FILE).write_text(json.dumps({"max_jobs": 2}))
    remember("models_folder", "/data/models")
    assert json.loads((loraforge_home / SETTINGS_FILE).read_text()) == {"max_jobs": 2, "models_folder": "/data/models"}
    assert remembered("models_folder") == "/data/models"
    (loraforge_home / SETTINGS_FILE).write_text("{not json")
    remember("models_folder", "/elsewhere")  # a file being edited by hand is left alone
    assert (loraforge_home / SETTINGS_FILE).read_text() == "{not json" and remembered("models_folder") == ""


def test_the_packing_column_agrees_with_the_gate_training_uses(models_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    from core.models.packed_attention import can_use_packed_attention

    make_tiny_family(tmp_path / "gemma3", "gemma3")
    folders = [models_folder / "llama", models_folder / "gemma2", tmp_path / "gemma3"]
    models = [AutoModelForCausalLM.from_pretrained(folder) for folder in folders]
    assert [can_use_packed_attention(model, 32) for model in models] == [True, False, True]
    assert [can_use_packed_attention(model, 33) for model in models] == [True, False, False]


@pytest.mark.parametrize("where, message", [
    ("", "Type the folder that holds your model folders"),
    ("/etc", "/etc is a system folder, which the page does not read. The models folder must lie outside /proc"),
    ("hidden", "lies in a hidden folder (.cache), which holds other tools' files; the page does not read there. "
               "Copy or link the models into a plain folder, or list them in a terminal with `launch.py models --dir"),
    ("missing", "does not exist. Check the path"),
])
def test_the_page_scans_only_a_folder_it_may_read_and_names_the_problem(tmp_path, where, message):
    from app.web.train.models import scan_folder

    hidden = tmp_path / ".cache" / "models"
    make_tiny_family(hidden / "llama", "llama")
    typed = {"hidden": str(hidden), "missing": str(tmp_path / "missing")}.get(where, where)
    table, choice, note = scan_folder(typed)
    assert message in note and not table.visible and not choice.visible
    assert remembered("models_folder") == ""


def test_the_page_offers_the_trainable_models_and_remembers_the_folder(models_folder):
    from app.web.train.models import scan_folder

    table, choice, note = scan_folder(f" {models_folder} ")
    assert note.startswith("Found 6 model(s), 4 trainable.") and table.visible and choice.visible
    assert [path for _, path in choice.choices] == [row.path for row in base_model_rows(models_folder)[0]
                                                    if row.trainable]
    assert remembered("models_folder") == str(models_folder)
