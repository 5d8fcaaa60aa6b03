"""Reading raw rows from a dataset file, each tagged with the line or row number a person would look at.

JSONL and CSV are read directly rather than through `datasets`, because `datasets` drops line numbers
and stops at the first bad line; validation needs every bad line with its number. JSON and Parquet rows
are numbered from 1 in file order. A hub dataset id is loaded with `datasets` when the hub is reachable.
"""

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data.problems import DatasetError
from core.hub import hub_unavailable, looks_like_hub_id

SUFFIX_UNITS = {".jsonl": "line", ".ndjson": "line", ".json": "row", ".csv": "line", ".parquet": "row"}
_UTF8_BOM = b"\xef\xbb\xbf"
MAX_ROW_BYTES = 8 << 20  # one JSONL line: no training example is near this; a longer one is read past, not held
_FIX_ENCODING = "save the file as UTF-8"


@dataclass(frozen=True)
class RawRow:
    """One row as read: a dict, or the reason it could not be read."""

    number: int
    record: dict[str, Any] | None = None
    problem: str | None = None


def source_unit(source: str) -> str:
    """Whether problems in this source are counted in lines or rows."""
    return SUFFIX_UNITS.get(Path(source).suffix.lower(), "row")


def check_source(source: str) -> Path | None:
    """The local file `source` names, after every check that reads no row (so a command can refuse a missing or
    empty file before it loads a model); None for a hub dataset id."""
    path = Path(source).expanduser()
    if not path.exists():
        if looks_like_hub_id(source) and path.suffix.lower() not in SUFFIX_UNITS:
            return None
        raise DatasetError(f"Dataset file not found: {source}. "
                           "Check the path, or pass a .jsonl, .json, .csv or .parquet file.")
    if path.is_dir():
        raise DatasetError(f"{source} is a folder. Pass one dataset file (.jsonl, .json, .csv or .parquet).")
    suffix = path.suffix.lower()
    if suffix not in SUFFIX_UNITS:
        raise DatasetError(f"{path.name}: unsupported file type '{suffix}'. "
                           "Convert it to .jsonl, .json, .csv or .parquet.")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path.name} is empty. Add at least one example row.")  # named as the person named it
    return path


def read_rows(source: str) -> Iterator[RawRow]:
    """Yield every row of a local file (by suffix) or a hub dataset id, in order."""
    path = check_source(source)
    if path is None:
        yield from _read_hub(source)
        return
    readers = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json, ".csv": _read_csv,
               ".parquet": _read_parquet}
    yield from readers[path.suffix.lower()](path)


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    with path.open("rb") as file:
        for number, raw in enumerate(_capped_lines(file), start=1):
            if raw is None:
                yield RawRow(number, problem=f"is longer than {MAX_ROW_BYTES >> 20} MB, far longer than an example "
                                             "ever is; check that the file has one example per line")
                continue
            if number == 1:
                raw = raw.removeprefix(_UTF8_BOM)
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield RawRow(number, problem=f"not valid UTF-8 (byte 0x{raw[error.start]:02x} "
                                             f"at column {error.start + 1}); {_FIX_ENCODING}")
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                yield RawRow(number, problem=f"bad JSON: {_json_problem(error)}")
                continue
            yield _object_row(number, value)


def _capped_lines(file) -> Iterator[bytes | None]:
    """The file's lines, None for each one longer than MAX_ROW_BYTES (read past in pieces, never held whole)."""
    while line := file.readline(MAX_ROW_BYTES + 1):
        if len(line) <= MAX_ROW_BYTES or line.endswith(b"\n"):
            yield line
            continue
        while (rest := file.readline(MAX_ROW_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield None


def _read_json(path: Path) -> Iterator[RawRow]:
    data = path.read_bytes().removeprefix(_UTF8_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DatasetError(f"{path.name} line {line}: not valid UTF-8 (byte 0x{data[error.start]:02x}); "
                           f"{_FIX_ENCODING}.") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{path.name} line {error.lineno}: bad JSON: {_json_problem(error)}. Fix the JSON syntax there."
        ) from None
    for number, item in enumerate(_json_rows(value, path.name), start=1):
        yield _object_row(number, item)


def _json_rows(value: Any, name: str) -> list:
    """The list of examples in a JSON file: the top-level array, or the one list inside {"data": [...]}."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = {key: item for key, item in value.items() if isinstance(item, list)}
        if "data" in lists:
            return lists["data"]
        if len(lists) == 1:
            return next(iter(lists.values()))
    raise DatasetError(
        f"{name}: expected a JSON array of example objects, or an object holding one such array "
        f'(e.g. {{"data": [...]}}). Reshape the file, or save it as JSONL (one object per line).'
    )


def _read_csv(path: Path) -> Iterator[RawRow]:
    # surrogateescape keeps undecodable bytes visible per row instead of failing the whole file.
    text = path.read_bytes().removeprefix(_UTF8_BOM).decode("utf-8", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if any(_has_bad_bytes(name) for name in header):
        raise DatasetError(f"{path.name} line 1: the header is not valid UTF-8; {_FIX_ENCODING}.")
    last_line = reader.line_num
    for row in reader:
        number, last_line = last_line + 1, reader.line_num
        if None in row:
            yield RawRow(number, problem=f"has {len(header) + len(row[None])} fields "
                                         f"but the header has {len(header)}; check the quoting")
        elif _swallowed_by_a_quote(row):
            filled = sum(value is not None for value in row.values())
            yield RawRow(number, problem=f"has {filled} of the header's {len(header)} fields, the last running on past "
                                         "the end of its line: a quote opened here is never closed; check the quoting")
        elif any(_has_bad_bytes(value) for value in row.values() if isinstance(value, str)):
            yield RawRow(number, problem=f"not valid UTF-8; {_FIX_ENCODING}")
        else:
            yield RawRow(number, record={key: value for key, value in row.items() if value is not None})


def _swallowed_by_a_quote(row: dict) -> bool:
    """A row short of fields whose last value holds a line break: an unclosed quote read the following lines (to
    the end of the file) as part of one field, which would otherwise be reported as a missing column."""
    values = list(row.values())
    return None in values and "\n" in next((value for value in reversed(values) if value is not None), "")


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DatasetError(f"{path.name} is not a readable Parquet file ({error}). "
                           "Re-export it, or save it as JSONL.") from None
    for number, record in enumerate(table.to_pylist(), start=1):
        yield _object_row(number, record)


def _read_hub(dataset_id: str) -> Iterator[RawRow]:
    if hub_unavailable():
        raise DatasetError(
            f"Cannot download the dataset {dataset_id}: the dataset hub is not reachable from here. "
            "Download the file on a machine with network access and pass its local path "
            "(.jsonl, .json, .csv or .parquet)."
        )
    import datasets

    try:
        rows = datasets.load_dataset(dataset_id, split="train")
    except Exception as error:  # the hub client raises many unrelated types for one user-level failure
        raise DatasetError(
            f"Could not load {dataset_id} from the hub: {str(error).splitlines()[0]}. "
            "Check the id (organisation/name) and that it has a 'train' split, or pass a local file."
        ) from None
    for number, record in enumerate(rows, start=1):
        yield _object_row(number, record)


def _object_row(number: int, value: Any) -> RawRow:
    if not isinstance(value, dict):
        return RawRow(number, problem=f"expected an object with named fields, got {describe_type(value)}")
    return RawRow(number, record=value)


def _has_bad_bytes(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def describe_type(value: Any) -> str:
    """A type name a person understands: 'a number', 'a list', not 'int'."""
    names = {str: "text", bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object",
             bytes: "bytes"}
    return "nothing (null)" if value is None else names.get(type(value), type(value).__name__)


def _json_problem(error: json.JSONDecodeError) -> str:
    """The decoder's message and where: some messages end in "at" already ("Invalid control character at")."""
    return f"{error.msg.removesuffix(' at')} at column {error.colno}"
