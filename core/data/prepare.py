"""From a dataset path to training-ready token ids, refusing bad data before any job starts.

    read_rows -> normalise (formats) -> render (chat template, masks) -> enforce (refuse or skip)

Rows the chat template cannot render, and rows left with no trained token after truncation, are
invalid rows like any other and are reported with their line or row number.
"""

from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from core.data.formats import Example
from core.data.load import AUTO, load_examples
from core.data.problems import DatasetError, RowProblem, ValidationReport
from core.data.render import RenderedExample, render_example


@dataclass
class PreparedDataset:
    """Rendered examples ready for batching, with the validation report behind them."""

    examples: list[RenderedExample]
    sources: list[Example]  # the normalised row behind each example, same order (prompts, reference answers)
    report: ValidationReport
    max_length: int
    train_on: str

    @property
    def truncated_rows(self) -> int:
        return sum(example.truncated for example in self.examples)

    @property
    def lengths(self) -> list[int]:
        """Token lengths as trained (after truncation)."""
        return [len(example.input_ids) for example in self.examples]


def prepare_dataset(
    source: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 1024,
    train_on: str = "assistant",
    format: str = AUTO,
    skip_invalid: bool = False,
    check: bool = True,
) -> PreparedDataset:
    """Load, validate and render a whole dataset.

    Raises DatasetError when any row is invalid and skip_invalid is False, or when no row is valid.
    With check=False the report is returned instead of raised (preflight shows it to the user).
    """
    if max_length < 2:
        raise DatasetError(f"max_length must be at least 2 tokens, got {max_length}. Raise --max-len.")
    if tokenizer.eos_token is None:
        raise DatasetError("The tokenizer has no EOS token, so answers could not teach the model to stop. "
                           "Use a model whose tokenizer defines one.")
    loaded = load_examples(source, format)
    report = loaded.report
    rendered, sources = [], []
    for example in loaded.examples:
        try:
            item = render_example(example, tokenizer, max_length, train_on)
        except RowProblem as problem:
            report.add(example.number, str(problem))
            continue
        if item.trained_tokens == 0:
            report.add(example.number,
                       f"no trained tokens left after truncation to {max_length} tokens; "
                       "raise max_length or shorten the prompt")
            continue
        rendered.append(item)
        sources.append(example)
    report.problems.sort(key=lambda problem: problem.number)
    if check and (blocker := report.blocker(skip_invalid)):
        raise DatasetError(blocker, report)
    return PreparedDataset(rendered, sources, report, max_length, train_on)
