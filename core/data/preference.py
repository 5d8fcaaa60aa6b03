"""Preference datasets: rows of (prompt, chosen, rejected), the form TRL and the hub's preference sets use.

    {"prompt": "...", "chosen": "...", "rejected": "..."}                                    plain text
    {"prompt": [{"role", "content"}, ...], "chosen": [{"role": "assistant", ...}], ...}     messages
    {"chosen": [user, assistant], "rejected": [user, assistant]}      implicit prompt: the shared opening turns

Every row is checked like an SFT row and reported by line: a missing or empty side, a chosen answer equal to
the rejected one, and (once rendered) a prompt that leaves no room for an answer within max length. Each pair
renders as two examples with the same prompt tokens, and only the final answer's tokens are trained; in a
packed batch with shared prefixes (core.data.prefixes) the prompt is then computed once for both answers.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from core.data.batch import Batch, BatchSettings, DataPosition, iterate_items
from core.data.formats import CHAT_ROLES, Example, turn_list
from core.data.problems import DatasetError, RowProblem, ValidationReport
from core.data.read import describe_type, read_rows, source_unit
from core.data.render import IGNORE_INDEX, RenderedExample, render_example

FIELDS = ("prompt", "chosen", "rejected")
Messages = tuple[dict[str, str], ...]


@dataclass(frozen=True)
class PreferencePair:
    """One valid row: the conversation so far, and the preferred and the dispreferred final answer."""

    number: int
    prompt: Messages
    chosen: str
    rejected: str

    def example(self, answer: str) -> Example:
        return Example(self.number, messages=(*self.prompt, {"role": "assistant", "content": answer}))


@dataclass(frozen=True)
class RenderedPair:
    """Both answers of a pair rendered after the same prompt tokens, only the final answer trained."""

    number: int
    chosen: RenderedExample
    rejected: RenderedExample

    @property
    def tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


@dataclass
class PreparedPreferences:
    """Rendered pairs ready for batching (`examples`, as PreparedDataset calls them), with their report."""

    examples: list[RenderedPair]
    sources: list[PreferencePair]
    report: ValidationReport
    max_length: int

    @property
    def truncated_rows(self) -> int:
        return sum(pair.chosen.truncated or pair.rejected.truncated for pair in self.examples)

    @property
    def lengths(self) -> list[int]:
        return [pair.tokens for pair in self.examples]


def is_preference_row(record: dict[str, Any]) -> bool:
    return record.get("chosen") is not None and record.get("rejected") is not None


def is_preference_dataset(source: str | Path) -> bool:
    """Whether most readable rows of `source` are (prompt, chosen, rejected) pairs."""
    records = [row.record for row in read_rows(str(source)) if row.record is not None]
    return mostly_pairs(records)


def mostly_pairs(records: list[dict[str, Any]]) -> bool:
    """Whether most of these rows are preference pairs (a file of them is no SFT dataset)."""
    return sum(map(is_preference_row, records)) * 2 > len(records)


def load_preferences(source: str | Path) -> tuple[list[PreferencePair], ValidationReport]:
    """Read and check every row; row problems are collected in the report, not raised."""
    source = str(source)
    report = ValidationReport(source=Path(source).name or source, unit=source_unit(source), format="preference")
    rows = list(read_rows(source))
    report.total_rows = len(rows)
    if not rows:
        raise DatasetError(f"{report.source} has no rows (the file is empty). Add at least one preference pair.")
    pairs = []
    for row in rows:
        if row.problem is not None:
            report.add(row.number, row.problem)
            continue
        try:
            pairs.append(normalise_pair(row.number, row.record))
        except RowProblem as problem:
            report.add(row.number, str(problem))
    return pairs, report


def normalise_pair(number: int, record: dict[str, Any]) -> PreferencePair:
    """One row as a PreferencePair; raises RowProblem naming the field at fault."""
    missing = [name for name in ("chosen", "rejected") if record.get(name) is None]
    if missing:
        fields = ", ".join(sorted(map(str, record))) or "none"
        raise RowProblem(f"missing field '{missing[0]}' (has: {fields}); a preference row needs 'prompt', 'chosen' "
                         "and 'rejected'")
    chosen, rejected = (_side(record[name], name) for name in ("chosen", "rejected"))
    if record.get("prompt") is not None:
        prompt = _prompt(record["prompt"])
    else:  # the implicit-prompt form: both sides are whole conversations that open with the same turns
        if isinstance(chosen, str) or isinstance(rejected, str):
            raise RowProblem("missing field 'prompt'; give the prompt, or give 'chosen' and 'rejected' as whole "
                             "conversations that open with the same turns")
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = tuple(chosen[:shared]), chosen[shared:], rejected[shared:]
        if not prompt:
            raise RowProblem("missing field 'prompt', and 'chosen' and 'rejected' share no opening turns")
    answers = [_final_answer(side, name) for side, name in ((chosen, "chosen"), (rejected, "rejected"))]
    if answers[0].strip() == answers[1].strip():
        raise RowProblem("'chosen' and 'rejected' are the same answer, so there is no preference to learn")
    if prompt[-1]["role"] == "assistant":
        raise RowProblem("the prompt ends with an assistant turn; it must end with the turn the answers reply to")
    return PreferencePair(number, prompt, *answers)


def _side(value: Any, name: str) -> str | list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem(f"field '{name}' is empty")
        return value
    return _messages(value, name)


def _prompt(value: Any) -> Messages:
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem("field 'prompt' is empty")
        return ({"role": "user", "content": value},)
    return tuple(_messages(value, "prompt"))


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    """A list of {"role", "content"} turns (CSV and Parquet exports may store it as JSON text)."""
    turns = []
    for i, turn in enumerate(turn_list(value, name)):
        where = f"{name}[{i}]"
        if not isinstance(turn, dict) or turn.get("role") not in CHAT_ROLES:
            raise RowProblem(f"{where} must be an object with 'role' ({', '.join(CHAT_ROLES)}) and 'content'")
        content = turn.get("content")
        if not isinstance(content, str) or not content.strip():
            raise RowProblem(f"{where}: field 'content' is empty" if isinstance(content, str) or content is None
                             else f"{where}: field 'content' must be text, got {describe_type(content)}")
        turns.append({"role": turn["role"], "content": content})
    return turns


def _final_answer(side: str | list[dict[str, str]], name: str) -> str:
    if isinstance(side, str):
        return side
    if len(side) != 1 or side[0]["role"] != "assistant":
        raise RowProblem(f"field '{name}' must hold one assistant answer after the prompt, got "
                         f"{len(side)} turn(s) ({', '.join(turn['role'] for turn in side)})")
    return side[0]["content"]


def render_pair(pair: PreferencePair, tokenizer: PreTrainedTokenizerBase, max_length: int) -> RenderedPair:
    """Render both answers; raises RowProblem when the prompt leaves no answer token within max_length."""
    chosen, rejected = (_final_answer_only(render_example(pair.example(answer), tokenizer, max_length))
                        for answer in (pair.chosen, pair.rejected))
    if not chosen.trained_tokens or not rejected.trained_tokens:
        raise RowProblem(f"the prompt alone fills max length {max_length} tokens, leaving no answer token; "
                         "raise max_len or shorten the prompt")
    return RenderedPair(pair.number, chosen, rejected)


def _final_answer_only(example: RenderedExample) -> RenderedExample:
    """Untrain every answer but the last: earlier assistant turns in the prompt are context, not preferences."""
    labels = list(example.labels)
    end = len(labels)
    while end and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    labels[:start] = [IGNORE_INDEX] * start
    return replace(example, labels=labels)


def prepare_preferences(source: str | Path, tokenizer: PreTrainedTokenizerBase, max_length: int = 1024,
                        skip_invalid: bool = False, check: bool = True) -> PreparedPreferences:
    """Load, check and render a whole preference dataset; raises DatasetError listing every bad row by line
    (unless skip_invalid, or check=False for a preflight that shows the report)."""
    pairs, report = load_preferences(source)
    rendered, sources = [], []
    for pair in pairs:
        try:
            rendered.append(render_pair(pair, tokenizer, max_length))
            sources.append(pair)
        except RowProblem as problem:
            report.add(pair.number, str(problem))
    report.problems.sort(key=lambda problem: problem.number)
    if check and (blocker := report.blocker(skip_invalid)):
        raise DatasetError(blocker, report)
    return PreparedPreferences(rendered, sources, report, max_length)


def iterate_pair_batches(pairs: Sequence[RenderedPair], settings: BatchSettings, pad_token_id: int,
                         start: DataPosition = DataPosition(), epochs: int | None = None,
                         share: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
    """Batches of `settings.batch_size` pairs, in the order and positions `iterate_batches` gives examples (so
    resume works alike); each batch holds chosen 2i and rejected 2i + 1 (`Batch.segment_examples`). With
    `share=(rank, ranks)`, that process's share of each batch's pairs (a placeholder when it has none)."""
    return iterate_items([pair.tokens for pair in pairs], lambda i: (pairs[i].chosen, pairs[i].rejected), settings,
                         pad_token_id, start, epochs, share)
