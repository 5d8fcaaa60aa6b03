"""Votes to data to a DPO run, driven in Chromium: two blind A/B votes and a tie, exported as preference pairs
from the Chat tab, the Train tab reads them as pairs for DPO, one click queues a DPO run on them, and the Runs tab
draws its preference curves.

One real server (tiny random Llama, one registered adapter, its own LORAFORGE_HOME) serves the module.
"""

import json
from pathlib import Path

import pytest

from core.jobs.adapters import import_adapter
from core.store.database import Store
from tests.browser import browser_page, screenshot, served_app
from tests.export_helpers import make_adapter
from tests.test_web_chat_compare import choose, open_chat, wait_for_answers, wait_for_text

pytestmark = pytest.mark.browser
RUN_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def web_home(tmp_path_factory, tiny_llama_dir):
    home = tmp_path_factory.mktemp("web-preference") / "home"
    with Store(home / "loraforge.db") as store:
        import_adapter(store, make_adapter(tiny_llama_dir, tmp_path_factory.mktemp("adapters") / "pirate"))
    return home


@pytest.fixture(scope="module")
def app_url(web_home, tiny_llama_dir):
    with served_app(web_home, "--model", str(tiny_llama_dir)) as url:
        yield url


def ask_and_vote(page, prompt: str, vote: str) -> list[str]:
    page.locator("#blind-prompt textarea").fill(prompt)
    page.locator("#blind-send").click()
    answers = wait_for_answers(page, ["#blind-a-chat", "#blind-b-chat"], "#vote-a")
    page.locator(f"#{vote}").click()
    wait_for_text(page, "#blind-reveal", "You voted")
    return answers


def train_tab_reads_the_pairs(page, exported: Path) -> None:
    """The Train tab previews the exported file as pairs, says which method takes it, and with DPO chosen its
    preflight counts the pairs and their tokens."""
    page.get_by_role("tab", name="Train").click()
    page.locator("#cfg-dataset textarea").fill(str(exported))
    page.locator("#cfg-dataset textarea").press("Tab")
    wait_for_text(page, "#dataset-summary", "preference pairs")
    wait_for_text(page, "#preflight", "is a preference dataset")  # SFT, the default method, refuses it by name
    page.locator("#cfg-method").get_by_text("dpo", exact=True).click()
    wait_for_text(page, "#preflight", "Pairs: 2")
    assert "tokens per pair" in page.locator("#preflight").inner_text()


def test_votes_export_as_preference_data_and_train_a_dpo_run_in_one_click(app_url, web_home):
    with browser_page() as page:
        open_chat(page, app_url, "Blind A/B")
        choose(page, "blind-2", "pirate")
        a_won = ask_and_vote(page, "Say hello.", "vote-a")
        b_won = ask_and_vote(page, "Name a colour.", "vote-b")
        ask_and_vote(page, "Count to three.", "vote-tie")

        page.locator("#votes-export").click()
        wait_for_text(page, "#votes-note", "2 preference pair(s)")
        assert "1 tie(s)" in page.locator("#votes-note").inner_text()
        exported = sorted((web_home / "exports").glob("votes-*.jsonl"))[-1]
        rows = [json.loads(line) for line in exported.read_text().splitlines()]
        assert [(row["prompt"][-1]["content"], row["chosen"], row["rejected"]) for row in rows] == [
            ("Say hello.", a_won[0], a_won[1]), ("Name a colour.", b_won[1], b_won[0])]
        assert page.locator("#votes-file").is_visible()
        screenshot(page, "chat-votes-exported")

        train_tab_reads_the_pairs(page, exported)
        page.get_by_role("tab", name="Chat").click()
        page.locator("#votes-train").click()
        wait_for_text(page, "#votes-note", "is queued")
        with Store(web_home / "loraforge.db") as store:
            [run] = [run for run in store.list_runs() if run["config"]["method"] == "dpo"]
        assert Path(run["config"]["dataset"]) == exported

        page.get_by_role("tab", name="Runs").click()
        page.wait_for_function(
            "() => document.querySelector('#run-progress [data-status]')?.dataset.status === 'completed'",
            timeout=RUN_TIMEOUT_MS)
        for curve in ("accuracy · train", "accuracy · eval", "margin · train", "margin · eval"):
            wait_for_text(page, "#preference-plot", curve)  # the legend, once the chart is drawn
        screenshot(page, "runs-dpo-preference-curves")
        assert "Traceback" not in page.content()
    with Store(web_home / "loraforge.db") as store:
        evals, steps = store.metrics(run["id"], "eval"), store.metrics(run["id"], "train")
    assert evals[0]["step"] == 0 and evals[0]["preference_accuracy"] == 0.5  # the base: every pair a tie
    assert steps and all(row["reward_margin"] is not None for row in steps)
