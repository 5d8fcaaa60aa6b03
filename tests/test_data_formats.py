"""Every supported file type and row format loads into the same normalised chat messages."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.data import DatasetError, load_examples

ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 + 3", "output": "5"},
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris"},
]
ALPACA_MESSAGES = [
    ({"role": "user", "content": "Add the numbers.\n\n2 + 3"}, {"role": "assistant", "content": "5"}),
    ({"role": "user", "content": "Name the capital of France."}, {"role": "assistant", "content": "Paris"}),
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def messages_of(source, **kwargs):
    loaded = load_examples(source, **kwargs)
    assert loaded.report.ok, loaded.report.problems
    return loaded.report.format, [example.messages for example in loaded.examples]


def test_alpaca_jsonl_joins_instruction_and_input(tmp_path):
    assert messages_of(write_jsonl(tmp_path / "a.jsonl", ALPACA)) == ("alpaca", ALPACA_MESSAGES)


def test_sharegpt_roles_are_mapped_to_chat_roles(tmp_path):
    row = {"conversations": [{"from": "system", "value": "Be terse."}, {"from": "human", "value": "Hi"},
                             {"from": "gpt", "value": "Hello"}]}
    fmt, messages = messages_of(write_jsonl(tmp_path / "s.jsonl", [row]))
    assert fmt == "sharegpt"
    assert messages == [({"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello"})]


def test_openai_messages_are_kept_as_they_are(tmp_path):
    turns = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
             {"role": "user", "content": "and 2+2?"}, {"role": "assistant", "content": "4"}]
    assert messages_of(write_jsonl(tmp_path / "m.jsonl", [{"messages": turns}])) == ("messages", [tuple(turns)])


def test_prompt_completion_becomes_user_and_assistant(tmp_path):
    fmt, messages = messages_of(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hi", "completion": "hi"}]))
    assert (fmt, messages) == ("prompt_completion",
                               [({"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"})])


def test_plain_text_has_no_messages(tmp_path):
    loaded = load_examples(write_jsonl(tmp_path / "t.jsonl", [{"text": "Once upon a time."}]))
    assert loaded.report.format == "text"
    assert [(e.messages, e.text) for e in loaded.examples] == [((), "Once upon a time.")]


@pytest.mark.parametrize("shape", ["array", "data_key"])
def test_json_array_and_data_object(tmp_path, shape):
    path = tmp_path / "a.json"
    path.write_text(json.dumps(ALPACA if shape == "array" else {"data": ALPACA, "version": 2}), encoding="utf-8")
    assert messages_of(path) == ("alpaca", ALPACA_MESSAGES)


def test_csv_rows(tmp_path):
    path = tmp_path / "a.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(ALPACA)
    assert messages_of(path) == ("alpaca", ALPACA_MESSAGES)


def test_csv_messages_column_holding_json(tmp_path):
    path = tmp_path / "m.csv"
    turns = [{"role": "user", "content": "Hi, there"}, {"role": "assistant", "content": "Hello"}]
    with path.open("w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([["messages"], [json.dumps(turns)]])
    assert messages_of(path) == ("messages", [tuple(turns)])


def test_parquet_rows(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(ALPACA), path)
    assert messages_of(path) == ("alpaca", ALPACA_MESSAGES)


def test_forced_format_reports_rows_of_another_shape(tmp_path):
    loaded = load_examples(write_jsonl(tmp_path / "a.jsonl", ALPACA), format="text")
    assert loaded.report.invalid_rows == 2
    assert "mixed formats: this row is alpaca but the file is text" in loaded.report.problems[0].message


def test_hub_id_offline_says_to_download_the_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="not reachable.*pass its local path"):
        load_examples("someone/some-dataset")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="not found"):  # looks like org/name, but is a mistyped file
        load_examples("data/train.jsonl")
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"^data.txt: unsupported file type '\.txt'"):
        load_examples(tmp_path / "data.txt")
    (tmp_path / "empty.jsonl").write_text("")  # an upload's stored path (uploads/<hash>/) is not the person's name
    with pytest.raises(DatasetError, match=r"^empty.jsonl is empty. Add at least one example row."):
        load_examples(tmp_path / "empty.jsonl")
