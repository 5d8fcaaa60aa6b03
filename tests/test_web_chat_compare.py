"""The Chat tab driven in Chromium: one model answers as the chosen adapter; three columns (base, an adapter, a
typed weighted set) answer one prompt; a blind A/B round hides who is who until the vote, stores the vote and shows
the win rates.

One real server (tiny random Llama, two registered adapters, its own LORAFORGE_HOME) serves the module.
"""

import pytest

from app.web.chat.blind import WIN_RATE_COLUMNS
from core.jobs.adapters import import_adapter
from core.store.database import Store
from tests.browser import browser_page, screenshot, served_app
from tests.export_helpers import make_adapter

pytestmark = pytest.mark.browser
ANSWER_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def web_home(tmp_path_factory, tiny_llama_dir):
    home = tmp_path_factory.mktemp("web-chat") / "home"
    folders = tmp_path_factory.mktemp("adapters")
    with Store(home / "loraforge.db") as store:
        for seed, name in enumerate(("pirate", "dates")):
            import_adapter(store, make_adapter(tiny_llama_dir, folders / name, seed=seed))
    return home


@pytest.fixture(scope="module")
def app_url(web_home, tiny_llama_dir):
    with served_app(web_home, "--model", str(tiny_llama_dir)) as url:
        yield url


def open_chat(page, url: str, mode: str) -> None:
    """Open the page on a Chat sub-tab with greedy, short answers (the same every time)."""
    page.goto(url)
    page.get_by_role("tab", name=mode).click()
    page.get_by_text("Sampling settings").click()
    for label, value in (("Temperature (0 = greedy, repeatable)", "0"), ("Max new tokens", "16")):
        box = page.get_by_label(f"number input for {label}")
        box.fill(value)
        box.press("Enter")


def choose(page, picker: str, option: str) -> None:
    page.locator(f"#{picker}-model input").click()
    page.locator(f"#{picker}-model").get_by_role("option").filter(has_text=option).click()


def wait_for_answers(page, chats: list[str], button: str) -> list[str]:
    """Every chat answered and nothing is generating any more; their answers."""
    page.wait_for_function(
        "([chats, button]) => chats.every(c => document.querySelector(c + ' .bot')?.innerText.trim())"
        " && !document.querySelector(button).disabled && !document.querySelector('.generating')",
        arg=[chats, button], timeout=ANSWER_TIMEOUT_MS,
    )
    return [page.locator(f"{chat} .bot").last.inner_text().strip() for chat in chats]


def expect_error(page, message: str) -> None:
    """The readable error a person sees (never a traceback); close it as they would."""
    page.get_by_text(message).wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
    page.locator(".toast-close").first.click()


def wait_for_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => document.querySelector(s)?.innerText.includes(t)", arg=[selector, text],
                           timeout=ANSWER_TIMEOUT_MS)


def win_rate_rows(page) -> list[list[str]]:
    """The win-rate table's cells, row by row, as the page shows them (after the header's last column)."""
    cells = page.locator("#win-rates").inner_text().split("Win rate")[-1].strip().split("\n")
    width = len(WIN_RATE_COLUMNS)
    return [cells[start : start + width] for start in range(0, len(cells), width)]


def test_a_person_who_never_opens_the_sampling_settings_gets_answers(app_url):
    """The settings panel starts collapsed; its defaults must serve the first message of every mode as they are."""
    with browser_page() as page:
        page.goto(app_url)
        page.locator("#prompt textarea").fill("What is the capital of France?")
        page.locator("#send").click()
        assert wait_for_answers(page, ["#chat"], "#send")[0]

        page.get_by_role("tab", name="Side by side").click()
        page.locator("#sbs-prompt textarea").fill("What is the capital of France?")
        page.locator("#sbs-send").click()
        assert all(wait_for_answers(page, ["#left-chat", "#right-chat"], "#sbs-send"))
        assert "Traceback" not in page.content() and page.locator(".toast-body.error").count() == 0


def test_one_model_chat_answers_as_the_chosen_adapter(app_url):
    """The One model tab is not only the base: a person chats with the adapter they just trained."""
    with browser_page() as page:
        open_chat(page, app_url, "One model")
        answers = []
        for contender in ("Base model", "pirate"):
            choose(page, "single", contender)
            page.locator("#clear").click()
            page.locator("#prompt textarea").fill("What is the capital of France?")
            page.locator("#send").click()
            answers += wait_for_answers(page, ["#chat"], "#send")
        base, adapter = answers
        assert base and adapter and adapter != base
        assert "Traceback" not in page.content()


def test_three_columns_base_adapter_and_weighted_set_answer_one_prompt(app_url):
    with browser_page() as page:
        open_chat(page, app_url, "Side by side")
        assert not page.locator("#third-chat").is_visible()
        page.locator("#sbs-columns").get_by_text("3", exact=True).click()
        page.locator("#third-model").wait_for()
        assert not page.locator("#fourth-model").is_visible()  # hidden columns stay hidden

        choose(page, "right", "pirate")
        choose(page, "third", "Weighted set")
        page.locator("#third-set textarea").fill("pirate:lots, dates:0.5")
        page.locator("#sbs-prompt textarea").fill("What is the capital of France?")
        page.locator("#sbs-send").click()
        expect_error(page, "Column 3: The weight of 'pirate' is 'lots', not a number; write e.g. pirate:0.5.")
        assert page.locator("#left-chat .bot").count() == 0  # a bad set stops every column before any answers

        page.locator("#third-set textarea").fill("pirate:0.7, dates:0.5")
        page.locator("#sbs-send").click()
        base, adapter, blend = wait_for_answers(page, ["#left-chat", "#right-chat", "#third-chat"], "#sbs-send")
        screenshot(page, "chat-three-columns")
        assert base and adapter and blend
        assert adapter != base and blend != base  # each column answers with its own adapters
        for chat in ("#left-chat", "#right-chat", "#third-chat"):
            assert page.locator(f"{chat} .user").last.inner_text().strip() == "What is the capital of France?"
        assert page.locator("#fourth-chat .bot").count() == 0  # a hidden column does not answer
        assert "Traceback" not in page.content()


def test_blind_ab_hides_who_is_who_until_the_vote_then_stores_it_and_shows_win_rates(app_url, web_home):
    with browser_page() as page:
        open_chat(page, app_url, "Blind A/B")
        # two base models cannot be compared, so the second contender starts on the newest adapter
        page.wait_for_function("() => document.querySelector('#blind-2-model input').value.startsWith('dates')",
                               timeout=30_000)
        choose(page, "blind-2", "Base model")
        page.locator("#blind-prompt textarea").fill("Say hello.")
        page.locator("#blind-send").click()  # both contenders are the base model
        expect_error(page, "Both contenders are base model; choose two different ones to compare.")

        choose(page, "blind-2", "pirate")
        page.locator("#blind-send").click()
        answers = wait_for_answers(page, ["#blind-a-chat", "#blind-b-chat"], "#vote-a")
        assert all(answers)
        reveal = page.locator("#blind-reveal").inner_text()
        assert "Vote to see who was who" in reveal and "pirate" not in reveal and "base" not in reveal
        screenshot(page, "chat-blind-before-vote")

        page.locator("#clear").click()  # clears this round too, and the vote it waited for
        page.wait_for_function("() => document.querySelector('#vote-a').disabled")
        assert page.locator("#blind-a-chat .bot, #blind-b-chat .bot").count() == 0
        assert page.locator("#blind-reveal").inner_text().strip() == ""
        page.locator("#blind-prompt textarea").fill("Say hello.")
        page.locator("#blind-send").click()
        again = wait_for_answers(page, ["#blind-a-chat", "#blind-b-chat"], "#vote-a")
        assert sorted(again) == sorted(answers)  # greedy: the same two answers, in a fresh random order

        page.locator("#vote-a").click()
        wait_for_text(page, "#blind-reveal", "You voted: A is better")
        wait_for_text(page, "#win-rates", "100%")
        with Store(web_home / "loraforge.db") as store:
            [vote] = store.votes()
        assert vote["prompt"] == "Say hello." and vote["winner"] == "left"
        assert {vote["left"]["label"], vote["right"]["label"]} == {"base model", "pirate"}
        reveal = page.locator("#blind-reveal").inner_text()
        assert f"A was {vote['left']['label']}, B was {vote['right']['label']}" in reveal
        assert win_rate_rows(page) == [[vote["left"]["label"], "1", "1", "0", "0", "0", "100%"],
                                       [vote["right"]["label"], "1", "0", "1", "0", "0", "0%"]]
        assert page.locator("#vote-a").is_disabled()  # one vote per pair of answers
        screenshot(page, "chat-blind-after-vote")
        assert "Traceback" not in page.content()
