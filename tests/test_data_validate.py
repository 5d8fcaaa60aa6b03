"""Every kind of bad row is reported with its line or row number, and stops the job unless skipped."""

import json

import pytest

from core.data import DatasetError, load_examples, prepare_dataset
from core.data.problems import MAX_LISTED
from core.training.data_plan import TrainingData, split
from core.training.run_folder import SKIPPED_ROWS, RunFolder
from tests.tiny_models import make_tokenizer

GOOD = {"instruction": "Add the numbers.", "input": "2 + 3", "output": "5"}


def write_lines(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return str(path)


def good_line(**changes):
    return json.dumps({**GOOD, **changes})


def problems_of(source):
    report = load_examples(source).report
    return [(problem.number, problem.message) for problem in report.problems], report


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"instruction": "Add", "output": "5"', "bad JSON"),
        ('{"instruction": "Add\tthis", "output": "5"}', "bad JSON: Invalid control character at column 21"),
        (json.dumps({"instruction": "Add"}), "missing field 'output'"),
        (good_line(output=""), "field 'output' is empty"),
        (good_line(output=5), "field 'output' must be text, got a number"),
        (good_line(input=["a"]), "field 'input' must be text, got a list"),
        ('["not", "an", "object"]', "expected an object with named fields, got a list"),
        (b'{"instruction": "Add \xff\xfe", "output": "5"}', "not valid UTF-8 (byte 0xff at column 22)"),
        (json.dumps({"prompt": "Hi", "completion": "there"}),
         "mixed formats: this row is prompt_completion but the file is alpaca"),
        (json.dumps({"question": "Hi"}), "no known fields (has: question)"),
    ],
)
def test_bad_jsonl_row_is_reported_on_line_3(tmp_path, bad_line, expected):
    # Line 2 is blank: blank lines are skipped but still counted, as an editor counts them.
    source = write_lines(tmp_path / "d.jsonl", [good_line(), "", bad_line, good_line()])
    problems, report = problems_of(source)
    assert len(problems) == 1 and problems[0][0] == 3
    assert expected in problems[0][1]
    assert (report.total_rows, report.invalid_rows, report.format) == (3, 1, "alpaca")


@pytest.mark.parametrize(
    ("turns", "expected"),
    [
        ([{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}], "messages[1]: unknown role 'bot'"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}],
         "messages[1]: field 'content' is empty"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant"}], "messages[1]: missing field 'content'"),
        ([{"role": "user", "content": "Hi"}], "has no assistant turn"),
        ([{"role": "user", "content": "Hi"}, {"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}],
         "turn 1 is a system message"),
        ("hello", "must be a list of turns, got text"),
        ([], "field 'messages' is empty"),
    ],
)
def test_bad_conversation_names_the_turn(tmp_path, turns, expected):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    source = write_lines(tmp_path / "m.jsonl", [json.dumps(good), json.dumps({"messages": turns})])
    problems, _ = problems_of(source)
    assert problems == [(2, problems[0][1])] and expected in problems[0][1]


def test_sharegpt_unknown_role(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Hey"}]}]
    problems, _ = problems_of(write_lines(tmp_path / "s.jsonl", [json.dumps(row) for row in rows]))
    assert problems[0][0] == 2 and "conversations[1]: unknown role 'robot'" in problems[0][1]


def test_csv_problems_carry_file_line_numbers(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'instruction,input,output\nAdd,"2\n+ 3",5\nAdd,,\nAdd,1,2,3\nAdd \xff,1,2\nAdd,1,3\n')
    problems, report = problems_of(str(path))
    # Row 1 spans lines 2-3 (quoted newline); then lines 4, 5, 6 are bad and line 7 is good.
    assert [number for number, _ in problems] == [4, 5, 6]
    assert "field 'output' is empty" in problems[0][1]
    assert "has 4 fields but the header has 3" in problems[1][1]
    assert "not valid UTF-8" in problems[2][1]
    assert (report.unit, report.total_rows, report.valid_rows) == ("line", 5, 2)


def test_a_csv_quote_never_closed_is_named_not_taken_for_a_missing_column(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('instruction,output\nhello,world\n"unterminated,foo\nnext,row\n')
    problems, report = problems_of(str(path))
    [(number, problem)] = problems
    assert number == 3 and "a quote opened here is never closed; check the quoting" in problem
    assert "output" not in problem and report.valid_rows == 1


def test_json_document_errors_name_the_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"}\n  {"text": "c"}\n]\n')
    with pytest.raises(DatasetError, match="d.json line 4: bad JSON"):
        load_examples(path)
    path.write_bytes(b'[\n{"text": "a"},\n{"text": "\xc3("}\n]')
    with pytest.raises(DatasetError, match="line 3: not valid UTF-8"):
        load_examples(path)


def test_json_rows_are_numbered(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": 7}, {"text": "c"}]))
    problems, report = problems_of(path)
    assert report.unit == "row" and problems == [(2, "field 'text' must be text, got a number")]


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file_is_refused(tmp_path, content):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match="empty"):
        load_examples(path)


def test_invalid_rows_refuse_unless_skipped(tmp_path):
    tokenizer = make_tokenizer()
    source = write_lines(tmp_path / "d.jsonl", [good_line(), "{oops", good_line(output=3), good_line()])
    with pytest.raises(DatasetError) as refused:
        prepare_dataset(source, tokenizer, max_length=64)
    message = str(refused.value)
    assert ("2 of 4 rows are invalid" in message and "line 2: bad JSON" in message
            and "line 3: field 'output'" in message)
    assert "'Skip invalid rows' in the page, --skip-invalid on the command line) to use the 2 valid row(s)." in message
    prepared = prepare_dataset(source, tokenizer, max_length=64, skip_invalid=True)
    assert [example.number for example in prepared.examples] == [1, 4]
    assert prepared.report.invalid_rows == 2



def test_a_run_lists_the_rows_it_skips_once_per_file_and_drops_the_list_once_they_are_fixed(tmp_path):
    tokenizer = make_tokenizer()
    source = write_lines(tmp_path / "d.jsonl", [good_line(), "{oops", good_line(output=3), good_line()])
    prepared = prepare_dataset(source, tokenizer, max_length=64, skip_invalid=True)
    kept, held_out = split(prepared, 0.25, seed=0)  # a held-out share: the same file's report
    again = prepare_dataset(source, tokenizer, max_length=64, skip_invalid=True)  # an eval file that is the dataset
    for eval_set in (held_out, again):
        assert TrainingData(kept, eval_set, [], 0).record_skipped_rows(RunFolder(tmp_path)) == 2
        listing = (tmp_path / SKIPPED_ROWS).read_text()
        assert listing.count("d.jsonl: 2 of 4 rows are invalid") == 1 and "  line 2: bad JSON" in listing
    fixed = write_lines(tmp_path / "d.jsonl", [good_line()] * 4)  # fixed before the run resumes
    clean = prepare_dataset(fixed, tokenizer, max_length=64)
    assert TrainingData(clean, None, [], 0).record_skipped_rows(RunFolder(tmp_path)) == 0
    assert not (tmp_path / SKIPPED_ROWS).exists()

def test_all_rows_invalid_is_refused_even_when_skipping(tmp_path):
    source = write_lines(tmp_path / "d.jsonl", ["{oops", "{also bad"])
    with pytest.raises(DatasetError, match="No valid rows are left"):
        prepare_dataset(source, make_tokenizer(), max_length=64, skip_invalid=True)


def test_many_problems_are_all_counted_but_listing_is_capped(tmp_path):
    source = write_lines(tmp_path / "d.jsonl", [good_line()] + ["{bad"] * 500)
    report = load_examples(source).report
    assert report.invalid_rows == 500 and len(report.problems) == MAX_LISTED
    assert "... and 490 more" in report.blocker(skip_invalid=False)
