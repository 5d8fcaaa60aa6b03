"""Preflight numbers match the data, and the bundled samples are valid and reproducible."""

import json
from pathlib import Path

import pytest

from assets import make_samples
from core.data import data_preflight, prepare_dataset
from tests.tiny_models import make_tokenizer

SAMPLES = Path(make_samples.__file__).parent / "samples"


def write_rows(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def chat(answer):
    return {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}]}


def test_preflight_reports_the_numbers_and_a_marked_example(tmp_path):
    tokenizer = make_tokenizer()
    rows = [chat("Hello!"), "{broken", chat("fox " * 5), chat("fox " * 10), chat("fox " * 80)]
    source = write_rows(tmp_path / "d.jsonl", rows)
    report = data_preflight(source, tokenizer, max_length=48)
    prepared = prepare_dataset(source, tokenizer, max_length=48, skip_invalid=True)
    full = sorted(e.full_length for e in prepared.examples)

    assert (report.format, report.rows, report.invalid_rows) == ("messages", 5, 1)
    assert not report.ready and "line 2: bad JSON" in report.message and report.problems == [report.problems[0]]
    assert (report.length_p50, report.length_p95, report.length_max) == (full[1], full[3], full[3])
    assert full[3] > 48 and (report.truncated_rows, report.truncated_share) == (1, 0.25)
    trained = sum(e.trained_tokens for e in prepared.examples)
    assert (report.tokens == sum(prepared.lengths)
            and report.trained_token_share == pytest.approx(trained / report.tokens))
    assert report.example_marked == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n⟦Hello!<|im_end|>⟧\n"
    start, end = report.example_trained_spans[0]
    assert report.example_text[start:end] == "Hello!<|im_end|>"
    assert data_preflight(source, tokenizer, max_length=48, skip_invalid=True).ready


@pytest.mark.parametrize(("name", "fmt", "rows"), [("dates", "alpaca", 400), ("pirate", "messages", 300)])
def test_bundled_samples_are_valid(name, fmt, rows):
    tokenizer = make_tokenizer()
    train = prepare_dataset(SAMPLES / f"{name}.train.jsonl", tokenizer, max_length=512)
    held_out = prepare_dataset(SAMPLES / f"{name}.eval.jsonl", tokenizer, max_length=512)
    assert (train.report.format, len(train.examples), train.truncated_rows) == (fmt, rows, 0)
    assert held_out.report.ok and held_out.report.format == fmt


def test_date_eval_split_is_held_out():
    def inputs(split):
        return {json.loads(line)["input"] for line in (SAMPLES / f"dates.{split}.jsonl").read_text().splitlines()}

    assert len(inputs("eval")) == 100 and not inputs("train") & inputs("eval")


def test_pirate_chat_has_multi_turn_conversations():
    turns = [len(json.loads(line)["messages"]) for line in (SAMPLES / "pirate.train.jsonl").read_text().splitlines()]
    assert min(turns) == 2 and max(turns) >= 6


def test_samples_regenerate_to_the_committed_bytes(tmp_path):
    make_samples.main(tmp_path)
    committed = sorted(SAMPLES.glob("*.jsonl"))
    assert [path.name for path in committed] == sorted(path.name for path in tmp_path.glob("*.jsonl"))
    for path in committed:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
        assert path.stat().st_size < 200_000
