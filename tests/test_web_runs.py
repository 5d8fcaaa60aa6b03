"""The Runs tab driven in Chromium: compare two real runs (overlaid curves with a legend naming both, a table with
only the settings that differ) and then a third, see the whole legend of a loss plot, and Delete only after the
browser's confirm.

The runs are trained before the server starts (tiny random Llama, a few steps each, in this process); the server
has its own LORAFORGE_HOME. Every wait polls the page with a generous deadline.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.jobs.runs import create_run, execute_run
from core.store.database import Store
from tests.browser import browser_page, screenshot, served_app
from tests.job_helpers import tiny_config

pytestmark = pytest.mark.browser
# Two runs that differ in learning rate and rank only, and one to delete.
RUNS = {"slow-r4": {"lr": 1e-3, "rank": 4}, "fast-r8": {"lr": 5e-2, "rank": 8}, "scratch": {}}


@pytest.fixture(scope="module")
def web_home(tmp_path_factory, tiny_llama_dir):
    home = tmp_path_factory.mktemp("web-runs") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAFORGE_HOME", str(home))
        with Store() as store:
            for name, settings in RUNS.items():
                config = tiny_config(tiny_llama_dir, home.parent, steps=4, name=name)
                config = dataclasses.replace(config, eval_share=0.25, eval_every=2, **settings)
                execute_run(store, create_run(store, config, status="running"))
    return home


@pytest.fixture(scope="module")
def app_url(web_home, tiny_llama_dir):
    with served_app(web_home, "--model", str(tiny_llama_dir)) as url:
        yield url


# A run stopped at step 2 (Ctrl-C) before its first checkpoint, in a process of its own that then exits.
STOPPED_EARLY = """
import sys
from core.jobs.runs import create_run, execute_run
from core.store.database import Store
from core.training.config import TrainConfig

def stop_at_step_2(kind, payload):
    if kind == "metrics" and payload["step"] == 2:
        raise KeyboardInterrupt

with Store() as store:
    run_id = create_run(store, TrainConfig.from_yaml(sys.argv[1]), status="running")
    print(run_id, flush=True)
    execute_run(store, run_id, events=stop_at_step_2)
"""


def run_ids(home: Path) -> dict[str, str]:
    with Store(home / "loraforge.db") as store:
        return {run["name"]: run["id"] for run in store.list_runs()}


def open_runs(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Runs").click()
    page.locator("#run-progress [data-status]").wait_for(timeout=60_000)


def choose(page, run_id: str) -> None:
    """Add a run to the compare picker: open its list (from outside, so the click opens rather than toggles it)
    and click the run."""
    page.locator("#compare-note").click()
    page.locator("#compare-select input").click()
    page.get_by_role("option").filter(has_text=run_id).click()


def legend_inside_its_box(page, plot: str) -> bool:
    """The plot's legend is drawn and lies within the component's visible box (not clipped below it)."""
    return page.evaluate("""sel => {
        const box = document.querySelector(sel).getBoundingClientRect();
        const legend = document.querySelector(sel + ' .role-legend')?.getBoundingClientRect();
        return !!legend && legend.height > 0 && legend.bottom <= box.bottom && legend.top >= box.top;
    }""", plot)


def test_compare_two_runs_overlays_their_curves_and_lists_only_the_differences(app_url, web_home):
    ids = run_ids(web_home)
    with browser_page() as page:
        open_runs(page, app_url)
        page.locator("#loss-plot .role-legend").wait_for(timeout=60_000)
        assert legend_inside_its_box(page, "#loss-plot")  # the single run's plot shows its whole legend

        page.get_by_text("Compare runs").click()
        for name in ("slow-r4", "fast-r8"):
            choose(page, ids[name])
        page.locator("#compare-plot .role-legend").wait_for(timeout=60_000)
        page.wait_for_function("() => document.querySelector('#compare-table').innerText.includes('final eval loss')",
                               timeout=60_000)
        legend = page.locator("#compare-plot .role-legend").text_content()
        assert all(f"{name} · {split}" in legend for name in ("slow-r4", "fast-r8") for split in ("train", "eval"))
        assert legend_inside_its_box(page, "#compare-plot")
        table = page.locator("#compare-table").inner_text()
        cells = [line.strip() for line in table.split("\n") if line.strip()]
        assert "slow-r4" in cells and "fast-r8" in cells and "scratch" not in table
        assert cells.index("rank") < cells.index("lr") < cells.index("final train loss")  # config order, then figures
        for same in ("batch_size", "max_len", "seed", "dataset", "name"):
            assert same not in table  # equal settings are left out
        assert "tokens per second" in table and "2 setting(s) differ" in page.locator("#compare-note").inner_text()
        assert "Traceback" not in page.content()
        screenshot(page, "runs-compare")

        choose(page, ids["scratch"])  # a third run joins the plot already drawn
        page.wait_for_function("() => document.querySelector('#compare-plot .role-legend')?.textContent"
                               ".includes('scratch · train')", timeout=60_000)
        page.wait_for_function("() => document.querySelector('#compare-table').innerText.includes('scratch')",
                               timeout=60_000)


def test_delete_asks_first_and_a_dismissed_dialog_keeps_the_run(app_url, web_home):
    scratch = run_ids(web_home)["scratch"]
    run_dir = web_home / "runs" / scratch
    messages = []
    with browser_page() as page:
        open_runs(page, app_url)
        page.locator("#run-select input").click()
        page.get_by_role("option").filter(has_text=scratch).click()
        page.locator("#run-progress [data-status=completed]").wait_for(timeout=60_000)
        page.wait_for_function("id => document.querySelector('#run-stats').innerText.includes(id)", arg=scratch,
                               timeout=60_000)

        page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.dismiss()))
        page.locator("#run-delete").click()
        page.wait_for_timeout(2_000)  # time for a delete to land, were it sent
        assert scratch in messages[0] and "cannot be undone" in messages[0]
        assert scratch in run_ids(web_home).values() and run_dir.is_dir()
        assert scratch in page.locator("#runs-table").inner_text()

        page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.accept()))
        page.locator("#run-delete").click()
        page.wait_for_function("id => !document.querySelector('#runs-table').innerText.includes(id)", arg=scratch,
                               timeout=60_000)
        assert len(messages) == 2 and scratch not in run_ids(web_home).values() and not run_dir.exists()
        assert set(run_ids(web_home)) == {"slow-r4", "fast-r8"}  # only the confirmed run went
        # no other run is chosen in its place: its Delete button would be right under the pointer
        page.wait_for_function("() => document.querySelector('#run-stats').innerText.includes('Choose a run')",
                               timeout=60_000)
        page.wait_for_timeout(3_000)  # a refresh of the timer chooses nothing either
        assert page.locator("#run-delete").is_disabled() and page.locator("#run-select input").input_value() == ""
        screenshot(page, "runs-after-delete")


def test_resume_says_a_run_stopped_before_its_first_checkpoint_starts_over_and_it_completes(
    app_url, web_home, tiny_llama_dir
):
    config = dataclasses.replace(tiny_config(tiny_llama_dir, web_home.parent, steps=3, name="stopped-early"),
                                 eval_share=0.25)
    config.to_yaml(web_home.parent / "stopped-early.yaml")
    stopped = subprocess.run([sys.executable, "-c", STOPPED_EARLY, str(web_home.parent / "stopped-early.yaml")],
                             cwd=Path(__file__).resolve().parents[1],
                             env={**os.environ, "LORAFORGE_HOME": str(web_home)},
                             capture_output=True, text=True, timeout=300)
    assert "KeyboardInterrupt" in stopped.stderr
    run_id = stopped.stdout.split()[0]
    with browser_page() as page:
        open_runs(page, app_url)
        page.locator("#run-select input").click()
        page.get_by_role("option").filter(has_text=run_id).click()
        page.locator("#run-progress [data-status=interrupted]").wait_for(timeout=60_000)
        page.locator("#run-resume").click()
        page.get_by_text(f"Run {run_id} queued again. It stopped before its first checkpoint, so it starts over "
                         "from step 1.").wait_for(timeout=30_000)
        page.locator("#run-progress [data-status=completed]").wait_for(timeout=120_000)
        page.wait_for_function("() => document.querySelector('#run-stop').disabled")  # nothing left to stop ...
        # ... and it looks it once its transition is over: grey, where Gradio leaves it pale red
        page.wait_for_function("() => getComputedStyle(document.querySelector('#run-stop')).filter === 'grayscale(1)'",
                               timeout=5_000)
        assert "Traceback" not in page.content()
    with Store(web_home / "loraforge.db") as store:
        logged = [(row["step"], row["split"]) for row in store.metrics(run_id)]
        log_file = Path(store.get_run(run_id)["run_dir"]) / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in log_file.read_text().splitlines()] == [0, 1, 2, 3, 3]
    assert logged == [(0, "eval"), (1, "train"), (2, "train"), (3, "eval"), (3, "train")]  # each once
