"""What the Runs tab says about a run's progress, from a real store: the time left follows the run's recent pace,
and the eval loss says which step (and whether it is the base's own) it comes from."""

import re

import pytest

from app.web.runs.view import progress_html, stats_markdown
from core.store.database import Store


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "loraforge.db") as store:
        yield store


def running_run(store: Store, step_times: list[float], total: int = 100) -> dict:
    """A running run of `total` planned steps whose train rows were logged at `step_times` (seconds)."""
    run_id = store.create_run("pace", {"max_steps": total}, "tiny-llama", "data.jsonl", "ab" * 32, status="running")
    store.add_metrics(run_id, [{"step": 0, "split": "eval", "loss": 3.0, "time": 1000.0}] + [
        {"step": step, "split": "train", "loss": 2.0, "lr": 1e-3, "time": 1000.0 + at}
        for step, at in enumerate(step_times, 1)])
    return store.get_run(run_id)


def seconds_left(label: str) -> float:
    found = re.search(r"about (\d+) (s|min) left", label)
    assert found, label
    return int(found[1]) * (60 if found[2] == "min" else 1)


def test_time_left_follows_the_recent_pace_not_a_pause(store):
    times = [2.0 * step for step in range(1, 11)] + [620.0 + 2.0 * step for step in range(10)]
    label = progress_html(running_run(store, times), store)
    assert "step 20 of 100" in label
    assert 120 <= seconds_left(label) <= 200  # 80 steps x 2 s, shown as "3 min"; the whole run's average: 45 min


def test_time_left_follows_a_pace_that_changed(store):
    """A run that sped up (another job finished) is estimated at its new pace."""
    times = [10.0 * step for step in range(1, 31)] + [300.0 + 1.0 * step for step in range(1, 31)]
    label = progress_html(running_run(store, times), store)
    assert 35 <= seconds_left(label) <= 45  # 40 steps left at 1 s


def test_the_step_0_eval_loss_is_shown_as_the_bases(store):
    run = running_run(store, [1.0, 2.0])
    assert "eval loss 3.0000 at step 0 (the base)" in stats_markdown(run, store)
    store.add_metrics(run["id"], [{"step": 2, "split": "eval", "loss": 1.5, "time": 1003.0}])
    text = stats_markdown(run, store)
    assert "eval loss 1.5000 at step 2" in text and "(the base)" not in text
