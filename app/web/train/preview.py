"""What the Train tab shows about a dataset and a planned run before it starts: a preview of the first rows,
the validation problems with their line numbers, and the preflight figures, length histogram and memory estimate.

Uses the already-loaded base model's tokenizer and module shapes only: nothing here changes the model
(the chat may be using it) and nothing trains.
"""

import html

import pandas as pd

from app.web.train.panels import length_chart, memory_gauge
from core.data import load_examples
from core.data.formats import Example
from core.data.preference import is_preference_dataset, load_preferences
from core.models.loading import LoadedModel
from core.training.config import TrainConfig
from core.training.preflight import preflight_on

PREVIEW_ROWS = 5
PREVIEW_COLUMNS = ["Line", "Prompt", "Answer"]
MARK = '<mark style="background:#fde68a;color:#111">'


def preview(source: str) -> tuple[pd.DataFrame, str]:
    """The first valid rows as a table, and a markdown summary: detected format and every listed problem.
    DatasetError (missing file, unknown format) propagates for the caller to show."""
    if is_preference_dataset(source):
        pairs, report = load_preferences(source)
        rows = [[pair.number, pair.prompt[-1]["content"], f"✔ {pair.chosen}\n✘ {pair.rejected}"]
                for pair in pairs[:PREVIEW_ROWS]]
        summary = (f"**Format:** preference pairs (prompt, chosen, rejected: train with Method dpo or orpo) · "
                   f"**{report.total_rows} rows**, {report.invalid_rows} invalid")
    else:
        loaded = load_examples(source)
        report = loaded.report
        rows = [_preview_row(example) for example in loaded.examples[:PREVIEW_ROWS]]
        summary = f"**Format:** {report.format} · **{report.total_rows} rows**, {report.invalid_rows} invalid"
    if report.problems:
        listed = "\n".join(f"- {html.escape(str(problem))}" for problem in report.problems)
        more = report.invalid_rows - len(report.problems)
        summary += f"\n\n**Problems** (fix these lines, or tick 'Skip invalid rows' under Advanced):\n{listed}"
        summary += f"\n- … and {more} more" if more > 0 else ""
    return pd.DataFrame(rows, columns=PREVIEW_COLUMNS), summary


def preflight_view(config: TrainConfig, loaded: LoadedModel) -> tuple[str, str, str, str]:
    """The preflight figures (markdown), the length histogram and the memory estimate (HTML), and the first example
    with its trained tokens highlighted (HTML). A bad setting raises here, as it would at Start."""
    on_its_base = config.base == loaded.facts.source
    plan = preflight_on(loaded, config, timed=on_its_base)
    data, steps, seconds = plan.data, plan.total_steps, plan.estimated_seconds_per_step
    lines = [f"**Rows:** {data.rows} ({data.invalid_rows} invalid) · **format** {data.format}"]
    if data.pairs:
        lines.append(f"**Pairs:** {data.pairs} · **{data.tokens_per_pair:.0f} tokens per pair** (both answers)")
    if data.invalid_rows == data.rows:  # the figures below would all be of no rows: 0 tokens, p50 0, 1 step
        return ("\n\n".join([*lines, f"**Not ready:**\n```\n{data.message}\n```"]), "", "",
                highlighted(data.example_text, data.example_trained_spans))
    lines += [
        f"**Length (tokens):** p50 {data.length_p50} · p95 {data.length_p95} · max {data.length_max} · "
        f"**truncated** at {config.max_len}: {data.truncated_share:.0%} of rows",
        f"**Trained tokens:** {data.trained_token_share:.0%} of {data.tokens:,} tokens",
        f"**Trainable parameters:** {plan.trainable_parameters:,} ({plan.trainable_percent:.2f}% of "
        f"{loaded.facts.parameters:,})",
        f"**Steps:** {steps}",
    ]
    if on_its_base:
        if data.ready:  # no time for a run that would not start
            lines.append(f"**Estimated time:** {_duration(steps * seconds)} ({seconds:.2g} s a step on "
                         f"{loaded.model.device.type}; shared openings: {data.shared_token_share:.0%} of tokens)")
    else:
        lines.append(f"_Token figures use the served model's tokenizer ({loaded.facts.name}), not {config.base}; "
                     f"`python launch.py preflight` estimates the time on {config.base} itself._")
    if not data.ready:
        lines.append(f"**Not ready:**\n```\n{data.message}\n```")
    return ("\n\n".join(lines), length_chart(data.length_bins, config.max_len, data.truncated_share),
            memory_gauge(plan.memory), highlighted(data.example_text, data.example_trained_spans))


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    return f"about {seconds / 60:.1f} min" if seconds < 5400 else f"about {seconds / 3600:.1f} h"


def highlighted(text: str, spans: list[tuple[int, int]]) -> str:
    """The example as the model sees it, trained spans in <mark>."""
    out, cursor = [], 0
    for start, end in spans:
        out += [html.escape(text[cursor:start]), f"{MARK}{html.escape(text[start:end])}</mark>"]
        cursor = end
    out.append(html.escape(text[cursor:]))
    legend = f"<p><small>One example as the model sees it; {MARK}highlighted</mark> tokens are trained.</small></p>"
    return f'{legend}<pre style="white-space:pre-wrap;max-height:220px;overflow:auto">{"".join(out)}</pre>'


def _preview_row(example: Example) -> list:
    if example.text is not None:
        return [example.number, "", example.text]
    users = [m["content"] for m in example.messages if m["role"] == "user"]
    answers = [m["content"] for m in example.messages if m["role"] == "assistant"]
    return [example.number, users[-1] if users else "", answers[-1] if answers else ""]
