"""A person's mistake, shown in the page as an error toast that names the problem and the fix.

It is not a fault of the server, so Gradio is told not to print a traceback for it: the server log keeps
tracebacks for real faults only. Gradio renders a toast's message as HTML, so the text is escaped: a message that
quotes the person's input (YAML's `in "<unicode string>"`, a file name with `<`) would otherwise lose its tail.
The "Error" badges Gradio puts over the failed event's outputs are hidden by the page's CSS (assets/web.css)."""

import html

import gradio as gr


def refusal(message: str, **options) -> gr.Error:
    """The gr.Error to raise for a refused action (`options`: e.g. duration=None to keep it on screen)."""
    return gr.Error(html.escape(message).replace("\n", "<br>"), print_exception=False, **options)
