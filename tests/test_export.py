"""Merged and PEFT exports of the tiny Llama: logits equal the live adapter's, the parity check sees
differences, and bad input (missing adapter, wrong base, existing output, full disk) leaves nothing behind."""

import errno
import json
import os
import zipfile

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.cli import main
from core.export.exporter import export_adapters
from core.export.output import MARK, ZIP_MARK
from core.lora.errors import AdapterFileError
from core.store.database import Store
from core.store.errors import AdapterNotFound
from tests.export_helpers import live_logits, make_adapter
from tests.tiny_models import make_tiny_llama

IDS = torch.tensor([[1, 17, 42, 99, 7, 230, 5, 64, 3, 150]])


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    return [make_adapter(tiny_llama_dir, folder / f"adapter{seed}", seed=seed) for seed in (0, 1)]


def test_merged_logits_equal_the_live_adapter_and_the_folder_loads_plainly(tiny_llama_dir, adapters, tmp_path):
    result = export_adapters([str(adapters[0])], "merged", tmp_path / "merged", base=str(tiny_llama_dir))

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        got = merged(IDS).logits
    live = live_logits(tiny_llama_dir, {adapters[0]: 1.0}, IDS)
    base = live_logits(tiny_llama_dir, {}, IDS)
    assert (live - base).abs().max() > 0.1  # the adapter really changes the model
    torch.testing.assert_close(got, live, rtol=0, atol=1e-4)

    check = result.parity["checks"][0]
    assert result.status == "done" and result.parity["passed"]
    assert check["max_logit_diff"] < 1e-4 and check["greedy_agree"] and check["template_same"]
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == [
        MARK, "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json",
    ]
    assert AutoTokenizer.from_pretrained(tmp_path / "merged").chat_template == \
        AutoTokenizer.from_pretrained(tiny_llama_dir).chat_template
    [row] = Store().exports()
    assert (row["format"], row["status"], row["path"]) == ("merged", "done", str(tmp_path / "merged"))
    assert row["parity"] == result.parity


def test_weighted_merge_equals_the_weighted_composition_applied_live(tiny_llama_dir, adapters, tmp_path):
    export_adapters([str(a) for a in adapters], "merged", tmp_path / "mix", weights=[1.0, -0.5],
                    base=str(tiny_llama_dir))

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "mix").eval()
    with torch.no_grad():
        got = merged(IDS).logits
    live = live_logits(tiny_llama_dir, {adapters[0]: 1.0, adapters[1]: -0.5}, IDS)
    torch.testing.assert_close(got, live, rtol=0, atol=1e-4)
    unweighted = live_logits(tiny_llama_dir, {adapters[0]: 1.0, adapters[1]: 1.0}, IDS)
    assert (got - unweighted).abs().max() > 0.05  # the weights were applied, not ignored


def test_sharded_merged_folder_loads_with_its_index(tiny_llama_dir, adapters, tmp_path):
    export_adapters([str(adapters[0])], "merged", tmp_path / "sharded", base=str(tiny_llama_dir),
                    max_shard_bytes=40_000)

    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, live_logits(tiny_llama_dir, {adapters[0]: 1.0}, IDS),
                                   rtol=0, atol=1e-4)


def test_peft_export_as_folder_and_zip_round_trips(tiny_llama_dir, adapters, tmp_path):
    folder = export_adapters([str(adapters[0])], "peft", tmp_path / "peft", base=str(tiny_llama_dir))
    zipped = export_adapters([str(a) for a in adapters], "peft", tmp_path / "mix.zip", weights=[0.5, 2.0],
                             base=str(tiny_llama_dir))

    assert (tmp_path / "peft" / "adapter_model.safetensors").read_bytes() == \
        (adapters[0] / "adapter_model.safetensors").read_bytes()
    assert (tmp_path / "mix.zip").is_file()
    for result in (folder, zipped):
        assert result.status == "done"
        assert result.parity["checks"][0]["max_logit_diff"] < 1e-4
    assert {row["format"] for row in Store().exports()} == {"peft"}


def test_a_changed_chat_template_fails_the_parity_check_visibly(tiny_llama_dir, adapters, tmp_path, monkeypatch,
                                                               capsys):
    from core.export import merged as export_merged
    real_save = export_merged.save_merged

    def save_with_lost_template(model, tokenizer, folder, *args):
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        return real_save(model, tokenizer, folder, *args)

    monkeypatch.setattr("core.export.exporter.save_merged", save_with_lost_template)
    code = main(["merge", "--adapter", str(adapters[0]), "--base", str(tiny_llama_dir), "--out", str(tmp_path / "m")])

    out, err = capsys.readouterr()
    assert code == 4  # a script chaining `export && ollama create` stops here
    assert "WARNING: parity check failed: merged: the chat template was lost or changed" in err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "parity_failed" and not result["parity"]["passed"]
    assert Store().exports()[0]["status"] == "parity_failed"


def test_changed_weights_fail_the_parity_check(tiny_llama_dir, adapters, tmp_path, monkeypatch):
    from core.export import merged as export_merged
    real_save = export_merged.save_merged

    def save_perturbed(model, tokenizer, folder, *args):
        with torch.no_grad():
            model.lm_head.weight.add_(0.05)
        return real_save(model, tokenizer, folder, *args)

    monkeypatch.setattr("core.export.exporter.save_merged", save_perturbed)
    result = export_adapters([str(adapters[0])], "merged", tmp_path / "m", base=str(tiny_llama_dir))

    assert result.status == "parity_failed"
    check = result.parity["checks"][0]
    assert check["max_logit_diff"] > check["tolerance"] > 0
    assert any("logits differ by up to" in warning for warning in result.warnings)


def test_cli_merge_and_export_print_json_last(tiny_llama_dir, adapters, tmp_path, capsys):
    assert main(["merge", "--adapter", str(adapters[0]), "--adapter", str(adapters[1]), "--weights", "1,0.25",
                 "--base", str(tiny_llama_dir), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["export", "--adapter", str(adapters[0]), "--format", "peft", "--base", str(tiny_llama_dir),
                 "--out", str(tmp_path / "peft")]) == 0
    peft = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert merged["path"] == str(tmp_path / "merged") and merged["format"] == "merged"
    assert merged["parity"]["checks"][0]["max_logit_diff"] < 1e-4
    assert peft["path"] == str(tmp_path / "peft") and peft["status"] == "done"
    assert [row["id"] for row in Store().exports()] == [peft["export_id"], merged["export_id"]]


def test_missing_adapter_is_a_clear_error(tmp_path, capsys):
    assert main(["export", "--adapter", str(tmp_path / "nope"), "--format", "merged",
                 "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(AdapterNotFound, match="No run or registered adapter is called 'r-unknown'"):
        export_adapters(["r-unknown"], "merged", tmp_path / "o")
    assert not (tmp_path / "o").exists() and Store().exports() == []


def test_adapter_of_another_base_is_refused_and_nothing_is_written(adapters, tmp_path):
    other = make_tiny_llama(tmp_path / "other", hidden_size=32, intermediate_size=64)
    with pytest.raises(AdapterFileError, match=r"needs \(.*different base model or rank \(base model .*tiny-llama0.\)"):
        export_adapters([str(adapters[0])], "merged", tmp_path / "o", base=str(other))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "other"]
    assert Store().exports() == []


def test_force_replaces_an_earlier_export_and_never_a_folder_of_the_persons_own(
    tiny_llama_dir, adapters, tmp_path, capsys
):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "keep.txt").write_text("mine")
    (mine / "sub" / "more.txt").write_text("more")
    args = ["export", "--adapter", str(adapters[0]), "--format", "merged", "--base", str(tiny_llama_dir)]
    assert main([*args, "--out", str(mine)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert main([*args, "--out", str(mine), "--force"]) == 2
    assert "holds files LoRA Forge did not write" in capsys.readouterr().err
    assert (mine / "keep.txt").read_text() == "mine" and (mine / "sub" / "more.txt").read_text() == "more"

    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 0
    first = (out / "model.safetensors").stat().st_mtime_ns
    assert main([*args, "--out", str(out), "--force"]) == 0  # its own earlier export: replaced
    assert (out / MARK).is_file() and (out / "model.safetensors").stat().st_mtime_ns != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "mine", "out"]  # no staging or replaced leftovers


def test_an_output_that_is_a_link_is_never_followed(tiny_llama_dir, adapters, tmp_path, capsys):
    target = tmp_path / "important"
    (target / "keep").mkdir(parents=True)
    (target / "keep" / "data.txt").write_text("data")
    (target / MARK).write_text("")  # even an export's folder is not replaced through a link to it
    link = tmp_path / "link"
    link.symlink_to(target)
    for force in ([], ["--force"]):
        assert main(["export", "--adapter", str(adapters[0]), "--format", "peft", "--base", str(tiny_llama_dir),
                     "--out", str(link), *force]) == 2
        assert "is a symbolic link; LoRA Forge never writes through one" in capsys.readouterr().err
    assert (target / "keep" / "data.txt").read_text() == "data" and link.is_symlink()


def test_a_zipped_export_is_marked_and_replaced_only_when_it_is_ours(tiny_llama_dir, adapters, tmp_path, capsys):
    args = ["export", "--adapter", str(adapters[0]), "--format", "peft", "--base", str(tiny_llama_dir), "--force"]
    assert main([*args, "--out", str(tmp_path / "a.zip")]) == 0
    assert zipfile.ZipFile(tmp_path / "a.zip").comment == ZIP_MARK
    assert main([*args, "--out", str(tmp_path / "a.zip")]) == 0
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("notes.txt", "mine")
    assert main([*args, "--out", str(other)]) == 2
    assert "holds files LoRA Forge did not write" in capsys.readouterr().err
    assert zipfile.ZipFile(other).read("notes.txt") == b"mine"


def test_full_disk_removes_the_partial_export_and_records_nothing(tiny_llama_dir, adapters, tmp_path, monkeypatch):
    def write_then_fail(tensors, path, metadata=None):
        open(path, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("core.export.merged.save_tensors", write_then_fail)
    with pytest.raises(Exception, match="The disk is full") as error:
        export_adapters([str(adapters[0])], "merged", tmp_path / "out", base=str(tiny_llama_dir))
    assert "Free some disk space" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    assert Store().exports() == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_files_follow_the_umask_like_any_new_file(tiny_llama_dir, adapters, tmp_path, umask):
    """safetensors creates its files 0600 whatever the umask, so a vLLM, Ollama or container account could not
    read an exported adapter or merged model; every exported file gets the mode open() would give."""
    previous = os.umask(umask)
    try:
        export_adapters([str(adapters[0])], "merged", tmp_path / "merged", base=str(tiny_llama_dir))
        export_adapters([str(adapters[0])], "peft", tmp_path / "peft", base=str(tiny_llama_dir))
        export_adapters([str(adapters[0])], "merged", tmp_path / "sharded", base=str(tiny_llama_dir),
                        max_shard_bytes=40_000)
    finally:
        os.umask(previous)
    files = [p for folder in ("merged", "peft", "sharded") for p in (tmp_path / folder).iterdir()]
    assert sum(p.suffix == ".safetensors" for p in files) > 3
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert modes == dict.fromkeys(modes, oct(0o666 & ~umask))


def test_an_export_recorded_before_the_marker_can_still_be_replaced(tiny_llama_dir, adapters, tmp_path):
    out = tmp_path / "old-export"
    export_adapters([str(adapters[0])], "merged", out, base=str(tiny_llama_dir))
    (out / MARK).unlink()  # as an export written before exports were marked
    export_adapters([str(adapters[0])], "merged", out, base=str(tiny_llama_dir), force=True)
    assert (out / MARK).is_file() and (out / "model.safetensors").is_file()
