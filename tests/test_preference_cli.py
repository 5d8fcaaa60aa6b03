"""Votes to data to a DPO run, through the command line: `votes export`, `train --method dpo`, `evaluate` (the verbs
run in this process: the model loads in a second, and three interpreters would start in most of a minute)."""

import json
from pathlib import Path

import pytest

from app.cli import main
from core.data import DatasetError, load_examples
from core.store.database import Store


def cast_votes(store: Store) -> None:
    """Six decided votes with answers, a tie, a both-bad, and one vote from before answers were kept."""
    side = {"label": "base model", "adapters": []}
    for i in range(6):
        good, bad = f"Item {i} is red, thank you!", f"red {i}."
        winner = "left" if i % 2 else "right"
        left, right = (good, bad) if winner == "left" else (bad, good)
        store.add_vote(f"What colour is item {i}?", {**side, "answer": left, "system": "Be polite." if i else ""},
                       {**side, "answer": right, "system": "Be polite." if i else ""}, winner)
    store.add_vote("Tied?", {**side, "answer": "a"}, {**side, "answer": "b"}, "tie")
    store.add_vote("Bad?", {**side, "answer": "a"}, {**side, "answer": "b"}, "both_bad")
    store.add_vote("Old vote", side, side, "left")


def cli(capsys, *args: str) -> dict:
    """Run a verb as `launch.py` does; its last stdout line, the JSON outcome."""
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_votes_export_as_pairs_that_train_and_evaluate(tiny_llama_dir, tmp_path, capsys):
    with Store() as store:
        cast_votes(store)
    out = tmp_path / "prefs.jsonl"
    exported = cli(capsys, "votes", "export", "--out", str(out))
    assert exported == {"path": str(out), "pairs": 6, "ties": 1, "both_bad": 1, "without_answers": 1,
                        "same_answers": 0}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {"prompt": [{"role": "user", "content": "What colour is item 0?"}],
                       "chosen": "Item 0 is red, thank you!", "rejected": "red 0."}
    assert rows[1]["prompt"][0] == {"role": "system", "content": "Be polite."}

    trained = cli(capsys, "train", "--method", "dpo", "--beta", "0.2", "--base", str(tiny_llama_dir), "--dataset",
                  str(out), "--eval-share", "0", "--max-steps", "3", "--batch-size", "2", "--lr", "0.01", "--targets",
                  "all-linear")
    assert trained["steps"] == 3 and trained["train_loss"] < 0.6931
    log = (Path(trained["run_dir"]) / "job.log").read_text()
    assert "step 3 of 3: loss" in log and "preference accuracy" in log and "reward margin" in log
    with Store() as store:
        run = store.get_run(trained["run_id"])
        assert run["config"]["method"] == "dpo" and run["config"]["beta"] == 0.2
        logged = store.metrics(trained["run_id"], "train")
        assert [row["step"] for row in logged] == [1, 2, 3] and logged[-1]["preference_accuracy"] > 0.5

    scores = cli(capsys, "evaluate", "--adapter", trained["run_id"], "--dataset", str(out))
    assert scores["base"]["pairs"] == scores["adapter"]["pairs"] == 6
    assert scores["base"]["reward_accuracy"] is None and scores["adapter"]["reward_accuracy"] > 0.5
    assert scores["adapter"]["mean_margin"] > scores["base"]["mean_margin"]


def test_sft_on_a_preference_dataset_names_the_method_to_use(tmp_path):
    out = tmp_path / "prefs.jsonl"
    out.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}) + "\n")
    with pytest.raises(DatasetError, match="prefs.jsonl is a preference dataset.*--method dpo or orpo"):
        load_examples(out)
