"""The engine names what to do next (core.errors.NextStep) and never a command; each front-end words every next
step its own way: the CLI as the command to type, the page as the tab to use."""

import html

from app.cli import NEXT_STEPS as CLI_STEPS
from app.cli import said_in_the_terminal
from app.web.refusal import NEXT_STEPS as PAGE_STEPS
from app.web.refusal import refusal
from core.errors import NEXT_STEPS, LoraForgeError, NextStep
from core.store.errors import RunActive


def test_every_next_step_has_words_in_the_terminal_and_in_the_page():
    assert set(CLI_STEPS) == set(PAGE_STEPS) == set(NEXT_STEPS)
    assert all("launch.py" in words for words in CLI_STEPS.values())
    assert not any("launch.py" in words for words in PAGE_STEPS.values())


def test_a_run_error_gets_its_command_in_the_terminal_and_its_tab_in_the_page():
    error = RunActive("r-1", "running")
    assert "launch.py" not in str(error)
    assert said_in_the_terminal(error) == f"{error} Stop it with `python launch.py cancel r-1`."
    assert html.unescape(refusal(error).message) == f"{error} Stop it in the Runs tab."
    plain = LoraForgeError("Nothing to do next.")
    assert said_in_the_terminal(plain) == "Nothing to do next." == html.unescape(refusal(plain).message)
    assert NextStep("resume", "r-2").run_id == "r-2"
