"""The real default model learns the bundled structured task with the default settings (issue: training engine).

This is behaviour, not speed: how long it takes is printed here and measured in bench/learn_dates.py.
"""

import json
import time
from pathlib import Path

import pytest

from tests.test_train import DATES, DATES_EVAL
from tests.test_train_cli import last_json, run_cli


@pytest.mark.slow
def test_default_model_learns_dates_with_default_settings(default_model, default_model_home):
    started = time.monotonic()
    final = last_json(run_cli("train", "--dataset", DATES, "--eval-file", DATES_EVAL, home=default_model_home,
                              timeout=1800))
    minutes = (time.monotonic() - started) / 60
    scores = last_json(run_cli("evaluate", "--adapter", final["run_id"], "--dataset", DATES_EVAL,
                               home=default_model_home, timeout=900))
    print(json.dumps({"train_minutes_with_loading": round(minutes, 2), **final, "scores": scores}))
    assert scores["base"]["exact_match"] <= 0.1
    assert scores["adapter"]["exact_match"] >= 0.9
    assert scores["adapter"]["loss"] < scores["base"]["loss"] / 10
    # the adapter names the hub model the embedded GGUF came from, so PEFT's AutoPeftModel can find its base anywhere
    config = json.loads((Path(final["adapter_dir"]) / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
