"""Load a whole dataset and check every row before anything trains on it.

`load_examples` reads every row, decides the format, normalises each row into an `Example` and
records every bad row in a `ValidationReport`. It only raises for problems that leave nothing to
check (missing file, unreadable JSON document, no rows); what to do about row problems is the
caller's decision (`ValidationReport.blocker`): refuse, or drop the bad rows when the user chose to.
"""

from dataclasses import dataclass
from pathlib import Path

from core.data.formats import FORMATS, Example, dominant_format, normalise
from core.data.preference import mostly_pairs
from core.data.problems import DatasetError, RowProblem, ValidationReport
from core.data.read import read_rows, source_unit

AUTO = "auto"


@dataclass
class LoadedExamples:
    """The valid rows of a dataset, normalised, and the report on all rows."""

    examples: list[Example]
    report: ValidationReport


def load_examples(source: str | Path, format: str = AUTO) -> LoadedExamples:
    """Read, detect and validate the whole dataset; row problems are collected, not raised."""
    source = str(source)
    if format != AUTO and format not in FORMATS:
        raise DatasetError(f"Unknown dataset format '{format}'. Choose one of: {AUTO}, {', '.join(FORMATS)}.")
    report = ValidationReport(source=Path(source).name or source, unit=source_unit(source))
    rows = list(read_rows(source))
    report.total_rows = len(rows)
    if not rows:
        raise DatasetError(f"{report.source} has no example rows (the file is empty). Add at least one example.")
    records = [row.record for row in rows if row.record is not None]
    if format == AUTO and mostly_pairs(records):
        raise DatasetError(f"{report.source} is a preference dataset (prompt, chosen, rejected): train on it with "
                           "--method dpo or orpo (Method in the page), or score it with `evaluate`.")
    fmt = format if format != AUTO else dominant_format(records)
    if fmt is None and any(row.record is not None for row in rows):
        fields = sorted({str(key) for row in rows if row.record for key in row.record})
        raise DatasetError(
            f"{report.source}: no row has a known format (fields found: {', '.join(fields) or 'none'}). "
            "Use alpaca (instruction/input/output), sharegpt (conversations), messages, prompt/completion "
            "or text fields."
        )
    report.format = fmt or "unknown"
    examples = []
    for row in rows:
        if row.problem is not None:
            report.add(row.number, row.problem)
            continue
        try:
            examples.append(normalise(row.number, row.record, fmt))
        except RowProblem as problem:
            report.add(row.number, str(problem))
    return LoadedExamples(examples, report)

