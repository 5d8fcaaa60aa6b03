"""What goes wrong with a dataset, said so that a person can find the row and fix it.

Every row-level problem carries the line (JSONL, CSV) or row (JSON, Parquet, hub) number where it
sits. A `ValidationReport` counts every problem but lists only the first `MAX_LISTED`, so a file
with a million broken rows still gives a readable message.
"""

from dataclasses import dataclass, field

from core.errors import LoraForgeError

MAX_LISTED = 50
MAX_IN_MESSAGE = 10


class DatasetError(LoraForgeError):
    """The dataset cannot be used as it is; the message says where and what to change."""

    def __init__(self, message: str, report: "ValidationReport | None" = None):
        super().__init__(message)
        self.report = report


class RowProblem(Exception):
    """Raised while reading or normalising one row; becomes a `Problem` with the row's number."""


@dataclass(frozen=True)
class Problem:
    number: int
    unit: str  # "line" or "row"
    message: str

    def __str__(self) -> str:
        return f"{self.unit} {self.number}: {self.message}"


@dataclass
class ValidationReport:
    """Every problem found in a dataset (the first MAX_LISTED listed, all counted)."""

    source: str
    unit: str
    format: str = "unknown"
    total_rows: int = 0
    invalid_rows: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.invalid_rows == 0

    @property
    def valid_rows(self) -> int:
        return self.total_rows - self.invalid_rows

    def add(self, number: int, message: str) -> None:
        """Count one invalid row; keep its description while under the listing cap."""
        self.invalid_rows += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(Problem(number, self.unit, message))

    def blocker(self, skip_invalid: bool) -> str:
        """Why this dataset may not be used ("" when it may): invalid rows not skipped, or no valid row."""
        if self.valid_rows == 0:
            return self.listing() + "\nNo valid rows are left: fix the file."
        if not self.ok and not skip_invalid:
            return (
                self.listing() + "\nFix these rows, or skip invalid rows ('Skip invalid rows' in the page, "
                f"--skip-invalid on the command line) to use the {self.valid_rows} valid row(s)."
            )
        return ""

    def listing(self, limit: int = MAX_IN_MESSAGE) -> str:
        """The count of invalid rows and the first `limit` of them (at most MAX_LISTED are kept)."""
        shown = "\n".join(f"  {problem}" for problem in self.problems[:limit])
        more = self.invalid_rows - min(len(self.problems), limit)
        more_line = f"\n  ... and {more} more" if more > 0 else ""
        return f"{self.source}: {self.invalid_rows} of {self.total_rows} rows are invalid:\n{shown}{more_line}"
