"""A person's mistake, shown in the page as an error toast that names the problem and the fix.

It is not a fault of the server, so Gradio is told not to print a traceback for it: the server log keeps
tracebacks for real faults only. Gradio renders a toast's message as HTML, so the text is escaped: a message that
quotes the person's input (YAML's `in "<unicode string>"`, a file name with `<`) would otherwise lose its tail.
The "Error" badges Gradio puts over the failed event's outputs are hidden by the page's CSS (assets/web.css)."""

import html

import gradio as gr

from core.errors import LoraForgeError

# Where the page does each next step an engine error names (core.errors.NextStep).
NEXT_STEPS = {
    "runs": "See the runs in the Runs tab.",
    "resume": "Resume it in the Runs tab.",
    "cancel": "Stop it in the Runs tab.",
    "adapters": "See the adapters in the Adapters & Export tab.",
    "train": "Start one in the Train tab.",
}


def refusal(problem: str | LoraForgeError, **options) -> gr.Error:
    """The gr.Error to raise for a refused action: a message, or an engine error with its next step in the page's
    words (`options`: e.g. duration=None to keep it on screen)."""
    message = str(problem)
    if isinstance(problem, LoraForgeError) and problem.next_step:
        message = f"{message} {NEXT_STEPS[problem.next_step.action]}"
    return gr.Error(html.escape(message).replace("\n", "<br>"), print_exception=False, **options)
