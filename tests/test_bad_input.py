"""Bad input a person can give, from the security probes (D6-D8 and 1.4): each gets one clear line that names the
problem and the fix, never a traceback, and nothing half-registered or half-read is left behind."""

import json
import math

import pytest

from app.cli import main
from app.web.adapters.report import adapters_frame
from core.jobs.adapters import import_adapter
from core.lora.errors import AdapterFileError
from core.store.database import Store
from core.training.config import TrainConfig
from core.training.preflight import preflight_on
from tests.job_helpers import DATES
from tests.test_store import make_peft_folder

BAD_CONFIGS = {
    "a list": ([1, 2, 3], "holds a JSON list, not an object"),
    "null": (None, "holds a JSON NoneType, not an object"),
    "text": ("hello", "holds a JSON str, not an object"),
    "r 0": ({"r": 0}, "r is 0; a LoRA rank is a whole number"),
    "r -1": ({"r": -1}, "r is -1"),
    "r text": ({"r": "x"}, "r is 'x'"),
    "r huge": ({"r": 10**12}, "r is 1000000000000"),
    "r fraction": ({"r": 8.5}, "r is 8.5"),
    "alpha 0": ({"lora_alpha": 0}, "lora_alpha is 0; it must be a number above 0"),
    "dora 'no'": ({"use_dora": "no"}, "use_dora is 'no'; it must be true or false"),
    "targets a number": ({"target_modules": 5}, "target_modules is 5; it must be a list of module names"),
    "dropout 2": ({"lora_dropout": 2}, "lora_dropout is 2"),
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_a_malformed_adapter_config_is_refused_at_import_and_nothing_is_registered(loraforge_home, tmp_path, name,
                                                                                 capsys):
    change, message = BAD_CONFIGS[name]
    folder = make_peft_folder(tmp_path / "bad")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **change} if isinstance(change, dict)
                                                           else change))
    for verb in (["adapters", "import", str(folder)], ["adapters", "inspect", str(folder)]):
        assert main(verb) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and message in error and "Traceback" not in error
    with Store() as store:
        assert store.adapters() == []


def test_an_adapter_with_no_lora_tensors_is_refused(loraforge_home, tmp_path):
    folder = make_peft_folder(tmp_path / "empty-weights")
    import torch
    from safetensors.torch import save_file

    save_file({"something.else": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))
    with Store() as store, pytest.raises(AdapterFileError, match="holds no LoRA tensors"):
        import_adapter(store, folder)


def test_a_bad_row_already_in_the_store_is_shown_as_bad_and_never_breaks_the_list(loraforge_home, tmp_path, capsys):
    with Store() as store:
        good = import_adapter(store, make_peft_folder(tmp_path / "good"))
        store.record_adapter(tmp_path / "old", {"base_model": None, "rank": 4, "alpha": "x", "targets": 5,
                                                "parameters": "?", "size_bytes": 10}, source="imported")
        rows = store.adapters()
    frame = adapters_frame(rows)
    assert list(frame["Name"]) == ["old", "good"]
    assert frame.iloc[0]["Targets"] == "(invalid: 5)" and frame.iloc[1]["Targets"] == "q_proj, v_proj"
    assert main(["adapters", "list"]) == 0
    listing = capsys.readouterr().out
    assert "old" in listing and good["name"] in listing


@pytest.mark.parametrize("path_kind", ["device", "binary", "too large"])
def test_a_config_file_that_is_no_config_is_refused_at_once(loraforge_home, tmp_path, capsys, path_kind):
    path = {"device": "/dev/zero", "binary": tmp_path / "binary.yaml", "too large": tmp_path / "big.yaml"}[path_kind]
    if path_kind == "binary":
        path.write_bytes(bytes(range(256)) * 8)
    elif path_kind == "too large":
        path.write_text("# padding\n" * 200_000)
    assert main(["train", "--config", str(path), "--dataset", str(DATES)]) == 2
    error = capsys.readouterr().err
    expected = {"device": "is not a regular file", "binary": "is not text", "too large": "is larger than 1024 KB"}
    assert expected[path_kind] in error and "Traceback" not in error


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "inf"], "epochs is inf; it must be a finite number"),
    (["--alpha", "nan"], "alpha is nan; it must be a finite number"),
    (["--epochs", "1e9"], "epochs is 1e+09; use at most 1000"),
    (["--rank", "100000"], "rank is 100000; use at most 4096"),
    (["--batch-size", "1000000"], "batch_size is 1e+06; use at most 4096"),
])
def test_non_finite_and_absurd_settings_are_refused_with_the_fix(loraforge_home, capsys, flags, message):
    assert main(["preflight", "--dataset", str(DATES), *flags]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_an_adapter_larger_than_its_base_is_not_ready(tiny_llama_dir):
    from core.models.loading import load_base_model

    loaded = load_base_model(str(tiny_llama_dir))
    with pytest.raises(Exception, match="more than the whole base model's"):
        preflight_on(loaded, TrainConfig(base=str(tiny_llama_dir), dataset=str(DATES), rank=4096,
                                         targets="all-linear"))
    assert math.isfinite(preflight_on(loaded, TrainConfig(base=str(tiny_llama_dir), dataset=str(DATES),
                                                          rank=4)).estimated_seconds_per_step)


def test_options_without_a_verb_go_to_serve(capsys):
    """`launch.py --port 8000` (and `make run ARGS=...`, as the README says) is serve with those options."""
    assert main(["--host", "0.0.0.0", "--port", "8000"]) == 2  # serve's own refusal, before anything loads
    assert "exposes LoRA Forge to other machines" in capsys.readouterr().err


def test_an_overlong_jsonl_line_is_named_and_read_past_not_held(tmp_path):
    from core.data import load_examples
    from core.data.read import MAX_ROW_BYTES

    path = tmp_path / "bigline.jsonl"
    with open(path, "w") as file:
        file.write('{"instruction": "' + "x" * (MAX_ROW_BYTES + 10) + '", "output": "y"}\n')
        file.write('{"instruction": "What is 2 + 2?", "output": "4"}\n')
    report = load_examples(str(path)).report
    assert (report.total_rows, report.invalid_rows) == (2, 1)
    assert "line 1" in str(report.problems[0]) and "is longer than 8 MB" in str(report.problems[0])
