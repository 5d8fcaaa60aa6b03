"""A person's mistake, shown in the page as an error toast that names the problem and the fix.

It is not a fault of the server, so Gradio is told not to print a traceback for it: the server log keeps
tracebacks for real faults only."""

import gradio as gr


def refusal(message: str, **options) -> gr.Error:
    """The gr.Error to raise for a refused action (`options`: e.g. duration=None to keep it on screen)."""
    return gr.Error(message, print_exception=False, **options)
