"""Comparing runs: only the settings that differ are listed, in config order, and each run's final figures come
from its summary or, while it has none, its newest metrics."""

from app.web.runs.compare import diff_table, run_labels
from core.store.compare import config_differences, final_figures
from core.store.database import Store


def test_only_differing_settings_are_listed_in_config_order():
    a = {"name": "a", "dataset": "d.jsonl", "rank": 8, "targets": ["q_proj", "v_proj"], "lr": 1e-3, "seed": 0}
    b = {"name": "b", "dataset": "d.jsonl", "rank": 4, "targets": ["q_proj", "v_proj"], "lr": 1e-3, "seed": 0}
    c = {"name": "c", "dataset": "d.jsonl", "rank": 8, "targets": "qv", "lr": 1e-3, "seed": 0, "use_dora": True}
    assert config_differences([a, b]) == {"rank": [8, 4]}  # names label the columns; they are not settings
    assert config_differences([a, b, c]) == {"rank": [8, 4, 8], "targets": [["q_proj", "v_proj"]] * 2 + ["qv"],
                                             "use_dora": [None, None, True]}
    assert config_differences([a, dict(a)]) == {}


def test_final_figures_from_the_summary_else_the_newest_metrics(loraforge_home):
    with Store() as store:
        done = store.create_run("done", {}, "tiny", None, None)
        store.add_metrics(done, [{"step": 1, "loss": 3.0, "tokens_per_s": 10.0}])
        store.set_status(done, "running")
        store.set_status(done, "completed", summary={"train_loss": 1.5, "eval_loss": 1.7, "tokens_per_s": 99.0})
        going = store.create_run("going", {}, "tiny", None, None)
        store.add_metrics(going, [{"step": 1, "loss": 3.0, "tokens_per_s": 10.0},
                                  {"step": 2, "loss": 2.5, "tokens_per_s": 12.0},
                                  {"step": 2, "split": "eval", "loss": 2.75}])
        no_preferences = {"preference_accuracy": None, "reward_margin": None}  # an SFT run logs none
        assert final_figures(store, store.get_run(done)) == {"train_loss": 1.5, "eval_loss": 1.7, "tokens_per_s": 99.0,
                                                             **no_preferences}
        assert final_figures(store, store.get_run(going)) == {"train_loss": 2.5, "eval_loss": 2.75,
                                                              "tokens_per_s": 12.0, **no_preferences}
        dpo = store.create_run("dpo", {}, "tiny", None, None)
        store.add_metrics(dpo, [{"step": 1, "loss": 0.6, "preference_accuracy": 0.75, "reward_margin": 0.5},
                                {"step": 1, "split": "eval", "loss": 0.65, "preference_accuracy": 0.5,
                                 "reward_margin": 0.25}])
        assert final_figures(store, store.get_run(dpo))["preference_accuracy"] == 0.5  # the evaluation's
        assert final_figures(store, store.get_run(dpo))["reward_margin"] == 0.25
        starting = store.create_run("starting", {}, "tiny", None, None)  # evaluated at step 0 only: the base's loss
        store.add_metrics(starting, [{"step": 0, "split": "eval", "loss": 2.9},
                                     {"step": 1, "loss": 2.8, "tokens_per_s": 11.0}])
        assert final_figures(store, store.get_run(starting))["eval_loss"] is None

        runs = [{**store.get_run(done), "config": {"lr": 1e-3, "rank": 8}},
                {**store.get_run(going), "config": {"lr": 5e-2, "rank": 8}}]
        labels = run_labels(runs)
        table = diff_table(store, runs, labels, config_differences([run["config"] for run in runs]))
    assert labels == ["done", "going"] and list(table.columns) == ["Setting", "done", "going"]
    assert table.values.tolist() == [["lr", "0.001", "0.05"], ["final train loss", "1.5000", "2.5000"],
                                     ["final eval loss", "1.7000", "2.7500"], ["tokens per second", "99", "12"]]


def test_runs_sharing_a_name_are_told_apart_by_id():
    runs = [{"id": "r-1", "name": "dates"}, {"id": "r-2", "name": "dates"}, {"id": "r-3", "name": "pirate"}]
    assert run_labels(runs) == ["dates (r-1)", "dates (r-2)", "pirate"]
