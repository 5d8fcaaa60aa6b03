"""The data side of preflight: what a run would train on, shown before it starts.

It never raises for invalid rows: it reports them (with `ready` False unless the user chose to
skip them), so the CLI and the UI can show every problem and the numbers in one place.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from core.data.batch import BatchSettings, epoch_plan
from core.data.load import AUTO
from core.data.preference import prepare_preferences
from core.data.prefixes import shared_token_share
from core.data.prepare import prepare_dataset
from core.data.render import IGNORE_INDEX, RenderedExample

MARK_OPEN, MARK_CLOSE = "⟦", "⟧"
HISTOGRAM_BINS = 24


@dataclass
class LengthBin:
    """Examples whose token count (before truncation) lies in [start, end); `truncated` of them exceed max_length."""

    start: int
    end: int
    count: int
    truncated: int


@dataclass
class DataPreflight:
    source: str
    format: str
    rows: int
    invalid_rows: int
    problems: list[str]
    ready: bool  # False when invalid rows would stop the run (skip_invalid not chosen) or none is valid
    message: str  # why it is not ready, or "" when it is
    max_length: int
    length_p50: int  # tokens per example before truncation
    length_p95: int
    length_max: int
    truncated_rows: int
    truncated_share: float
    tokens: int  # after truncation
    trained_token_share: float
    shared_token_share: float = 0.0  # computed once in shared openings, when batched as the run would
    example_text: str = ""  # the first example, as the model sees it
    example_trained_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) in example_text
    example_marked: str = ""  # example_text with trained spans wrapped in ⟦ ⟧
    length_bins: list[LengthBin] = field(default_factory=list)
    pairs: int = 0  # a preference dataset's valid pairs (rows above count pairs; lengths are per answer)
    tokens_per_pair: float = 0.0  # both answers with the prompt each, after truncation


def data_preflight(
    source: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 1024,
    train_on: str = "assistant",
    format: str = AUTO,
    skip_invalid: bool = False,
    batches: BatchSettings | None = None,
    preference: bool = False,
) -> DataPreflight:
    """Validate and render the dataset as training would, and summarise it; see DataPreflight. With the run's
    `batches`, also the share of tokens its first epoch's batches compute once in shared openings. A preference
    dataset (DPO, ORPO) is summarised by its answers: each pair is a chosen and a rejected example."""
    if preference:
        prepared = prepare_preferences(source, tokenizer, max_length, check=False)
        examples = [answer for pair in prepared.examples for answer in (pair.chosen, pair.rejected)]
    else:
        prepared = prepare_dataset(source, tokenizer, max_length, train_on, format, check=False)
        examples = prepared.examples
    report = prepared.report
    full_lengths = sorted(example.full_length for example in examples)
    tokens = sum(len(example.input_ids) for example in examples)
    trained = sum(example.trained_tokens for example in examples)
    text, spans = marked_spans(examples[0], tokenizer) if examples else ("", [])
    message = report.blocker(skip_invalid)
    return DataPreflight(
        source=str(source),
        format=report.format,
        rows=report.total_rows,
        invalid_rows=report.invalid_rows,
        problems=[str(problem) for problem in report.problems],
        ready=not message,
        message=message,
        max_length=max_length,
        length_p50=_percentile(full_lengths, 0.50),
        length_p95=_percentile(full_lengths, 0.95),
        length_max=full_lengths[-1] if full_lengths else 0,
        truncated_rows=prepared.truncated_rows,
        truncated_share=prepared.truncated_rows / len(examples) if examples else 0.0,
        tokens=tokens,
        trained_token_share=trained / tokens if tokens else 0.0,
        shared_token_share=_shared_token_share(examples, batches, per_unit=2 if preference else 1),
        example_text=text,
        example_trained_spans=spans,
        example_marked=mark(text, spans),
        length_bins=length_histogram(full_lengths, max_length),
        pairs=len(prepared.examples) if preference else 0,
        tokens_per_pair=tokens / len(prepared.examples) if preference and prepared.examples else 0.0,
    )


def _shared_token_share(examples: list[RenderedExample], batches: BatchSettings | None, per_unit: int) -> float:
    """The share for batches of `batches.batch_size` units (examples, or pairs: `per_unit` consecutive examples)."""
    if batches is None or not batches.share_prefix or not examples:
        return 0.0
    units = range(0, len(examples), per_unit)
    plan = epoch_plan([sum(len(e.input_ids) for e in examples[i:i + per_unit]) for i in units], batches, epoch=0)
    return shared_token_share(examples, [[u * per_unit + k for u in batch for k in range(per_unit)] for batch in plan])


def marked_spans(example: RenderedExample, tokenizer: PreTrainedTokenizerBase) -> tuple[str, list[tuple[int, int]]]:
    """Decode an example run by run and return its text with the character spans of trained tokens."""
    text, spans, start = "", [], 0
    for end in range(1, len(example.input_ids) + 1):
        trained = example.labels[start] != IGNORE_INDEX
        if end < len(example.input_ids) and (example.labels[end] != IGNORE_INDEX) == trained:
            continue
        piece = tokenizer.decode(example.input_ids[start:end])
        if trained:
            spans.append((len(text), len(text) + len(piece)))
        text, start = text + piece, end
    return text, spans


def mark(text: str, spans: list[tuple[int, int]]) -> str:
    """Wrap each span of `text` in ⟦ ⟧."""
    out, cursor = [], 0
    for start, end in spans:
        out += [text[cursor:start], MARK_OPEN, text[start:end], MARK_CLOSE]
        cursor = end
    return "".join(out) + text[cursor:]


def length_histogram(lengths: list[int], max_length: int, bins: int = HISTOGRAM_BINS) -> list[LengthBin]:
    """Equal-width bins from the shortest to past the longest example. The range takes in max_length when that is
    below the shortest or at most twice the longest example, so the limit can be drawn among the bars; a limit far
    beyond the data would squash them."""
    if not lengths:
        return []
    lower, longest = min(min(lengths), max_length), max(lengths)
    upper = max(longest, max_length) if max_length <= 2 * longest else longest
    width = max(1, math.ceil((upper - lower + 1) / bins))
    counts = [[0, 0] for _ in range(math.ceil((upper - lower + 1) / width))]
    for length in lengths:
        counts[(length - lower) // width][0] += 1
        counts[(length - lower) // width][1] += length > max_length
    return [LengthBin(lower + i * width, lower + (i + 1) * width, count, truncated)
            for i, (count, truncated) in enumerate(counts)]


def _percentile(sorted_values: list[int], share: float) -> int:
    """Nearest-rank percentile: the smallest value with at least `share` of the values at or below it."""
    if not sorted_values:
        return 0
    return sorted_values[max(0, math.ceil(share * len(sorted_values)) - 1)]
