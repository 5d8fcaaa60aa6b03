"""The web page, driven in Chromium as a person would: open it, ask a question, read the streamed answer."""

import pytest

from tests.browser import browser_page, screenshot, served_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_person_chats_with_the_default_model_in_the_browser(default_model, default_model_home):
    with served_app(default_model_home) as url, browser_page() as page:
        page.goto(url)
        page.get_by_text("SmolLM2-135M-Instruct", exact=False).first.wait_for(timeout=60_000)
        assert "134.5 M parameters" in page.locator("#model-facts").inner_text()

        page.get_by_text("Sampling settings").click()
        temperature = page.get_by_label("number input for Temperature (0 = greedy, repeatable)")
        temperature.fill("0")
        temperature.press("Enter")

        page.locator("#prompt textarea").fill("What is the capital of France?")
        page.locator("#send").click()
        answer = page.locator("#chat .bot").last
        answer.wait_for(timeout=120_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#chat .bot')].some(e => e.innerText.includes('Paris'))",
            timeout=120_000,
        )
        screenshot(page, "chat-default-model")
        assert "Paris" in answer.inner_text()
        assert page.locator("#prompt textarea").input_value() == ""  # the box is cleared for the next message
