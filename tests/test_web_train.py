"""The web app driven in Chromium as a person would: refuse a bad dataset, train from the Train tab, watch the
run in the Runs tab across a page reload, then chat side by side with the base and the new adapter; and see the
preflight's length histogram and memory warning.

One real server (tiny random Llama, its own LORAFORGE_HOME) serves the module; the training job is a separate
process started by the server's supervisor. Every wait polls the page with a generous deadline.
"""

import json
import os
import shutil
import signal

import pytest
import yaml
from transformers import AutoTokenizer

from core.data import data_preflight
from core.store.database import Store
from core.store.processes import process_start_time
from tests.browser import browser_page, screenshot, served_app, server_log
from tests.job_helpers import DATES, supervisor_pid
from tests.tiny_models import make_tiny_family

pytestmark = pytest.mark.browser
RUN_TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def web_home(tmp_path_factory):
    return tmp_path_factory.mktemp("web-train") / "home"


@pytest.fixture(scope="module")
def app_url(web_home, tiny_llama_dir):
    with served_app(web_home, "--model", str(tiny_llama_dir)) as url:
        yield url
    pid = supervisor_pid(web_home)  # the supervisor outlives the server by design; not past this module
    if pid and process_start_time(pid) is not None:
        os.kill(pid, signal.SIGKILL)


def runs_in(home) -> list[dict]:
    with Store(home / "loraforge.db") as store:
        return store.list_runs()


def open_tab(page, url: str, name: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name=name).click()


def set_number(page, setting: str, value) -> None:
    box = page.locator(f"#cfg-{setting} input")
    box.fill(str(value))
    box.press("Tab")


def text_of(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def test_bad_upload_shows_line_numbered_problems_and_start_refuses(app_url, web_home, tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"instruction": "Say hi", "output": "hi"}\n{not json\n{"instruction": "no answer"}\n')
    before = len(runs_in(web_home))
    with browser_page() as page:
        open_tab(page, app_url, "Train")
        page.locator("#dataset-upload input[type=file]").set_input_files(str(bad))
        page.wait_for_function("() => document.querySelector('#dataset-summary').innerText.includes('line 3')",
                               timeout=60_000)
        summary = text_of(page, "#dataset-summary")
        assert "3 rows, 2 invalid" in summary and "line 2:" in summary and "line 3:" in summary
        assert "Traceback" not in page.content()

        page.locator("#start").click()
        toast = page.get_by_test_id("toast-body").filter(has_text="2 of 3 rows are invalid")
        toast.wait_for(timeout=60_000)  # Start refused with the problems, line by line
        assert "line 2: bad JSON" in toast.inner_text() and "line 3: missing field 'output'" in toast.inner_text()
        assert "broken.jsonl: 2 of 3" in toast.inner_text() and "-broken.jsonl" not in toast.inner_text()  # as named
        screenshot(page, "train-bad-dataset")
        assert "Traceback" not in page.content()
    assert len(runs_in(web_home)) == before  # no run was created
    assert "Traceback" not in server_log(web_home, app_url)  # a person's mistake is not a server fault


def test_start_refuses_a_max_length_that_leaves_the_rows_nothing_to_train(app_url, web_home):
    with browser_page() as page:
        open_tab(page, app_url, "Train")
        page.locator("#sample-select input").click()
        page.get_by_role("option", name="dates").click()
        set_number(page, "max_len", 8)  # shorter than every prompt: truncation leaves no answer token
        page.wait_for_function("() => document.querySelector('#preflight').innerText.includes('Not ready')",
                               timeout=60_000)
        shown = text_of(page, "#preflight")
        assert "Estimated time" not in shown  # no time for a run that would not start
        assert "400 invalid" in shown and "p50" not in shown and "Steps" not in shown  # no figures of no rows
        page.locator("#start").click()
        toast = page.get_by_test_id("toast-body").filter(has_text="no trained tokens left after truncation to 8")
        toast.wait_for(timeout=60_000)
        assert "raise max_length" in toast.inner_text()
        screenshot(page, "train-max-length-too-short")
    assert runs_in(web_home) == []  # refused before a run was recorded, not left behind as a failed one


def test_person_trains_watches_across_a_reload_and_chats_side_by_side(app_url, web_home):
    with browser_page() as page:
        open_tab(page, app_url, "Train")
        page.locator("#sample-select input").click()
        page.get_by_role("option", name="dates").click()
        page.wait_for_function("() => document.querySelector('#preflight').innerText.includes('Trainable parameters')",
                               timeout=60_000)
        assert "7 May 1942" in text_of(page, "#dataset-preview")  # the first row of the sample
        assert "alpaca" in text_of(page, "#dataset-summary")
        assert page.locator("#preflight-example mark").count() >= 1  # trained tokens highlighted
        for setting, value in {"max_steps": 3, "lr": 0.05, "batch_size": 2, "max_len": 64}.items():
            set_number(page, setting, value)
        page.wait_for_function("() => document.querySelector('#preflight').innerText.includes('Steps: 3')",
                               timeout=60_000)
        assert "Estimated time: " in text_of(page, "#preflight") and " s a step on cpu" in text_of(page, "#preflight")
        screenshot(page, "train-preflight")

        page.locator("#start").click()
        page.locator("#run-progress [data-status]").wait_for(timeout=60_000)  # the page switched to Runs
        [run] = runs_in(web_home)
        assert run["config"]["max_steps"] == 3 and run["dataset_path"].endswith("dates.train.jsonl")

        page.reload()  # the job is its own process: the page comes back to it
        page.get_by_role("tab", name="Runs").click()
        page.wait_for_function("id => document.querySelector('#run-select input')?.value.includes(id)", arg=run["id"],
                               timeout=60_000)
        page.locator("#run-progress [data-status=completed]").wait_for(timeout=RUN_TIMEOUT_MS)
        page.locator("#loss-plot canvas, #loss-plot svg").first.wait_for(timeout=60_000)
        legend = page.locator("#loss-plot .role-legend").text_content()
        assert "train" in legend and "eval" in legend
        with Store(web_home / "loraforge.db") as store:  # eval at steps 0 (the base) and 3: a line, not a lone point
            assert [m["step"] for m in store.metrics(run["id"], "eval")] == [0, 3]
        assert "step 3 of 3 (100%)" in text_of(page, "#run-progress")
        assert "completed" in text_of(page, "#runs-table")
        assert "step 3" in text_of(page, "#run-samples")  # checkpoint samples by step
        page.wait_for_function("() => document.querySelector('#footer').innerText.includes('0 running, 0 queued')",
                               timeout=60_000)
        assert "Device: cpu" in text_of(page, "#footer")
        screenshot(page, "runs-completed")
        [run] = runs_in(web_home)
        assert run["status"] == "completed" and run["summary"]["steps"] == 3

        page.get_by_role("tab", name="Chat").click()
        page.get_by_role("tab", name="Side by side").click()
        page.get_by_text("Sampling settings").click()
        for label, value in (("Temperature (0 = greedy, repeatable)", "0"), ("Max new tokens", "16")):
            box = page.get_by_label(f"number input for {label}")
            box.fill(value)
            box.press("Enter")
        page.locator("#right-model input").click()
        page.get_by_role("option").filter(has_text=run["id"]).click()
        page.locator("#sbs-prompt textarea").fill("Rewrite the date as YYYY-MM-DD. 20 February 1966")
        page.locator("#sbs-send").click()
        page.wait_for_function(  # both columns answered, and the input is free again (the reply is complete)
            "() => ['#left-chat', '#right-chat'].every(c => document.querySelector(c + ' .bot')?.innerText.trim())"
            " && !document.querySelector('#sbs-send').disabled && !document.querySelector('.generating')",
            timeout=120_000,
        )
        screenshot(page, "chat-side-by-side")
        base_answer, adapter_answer = text_of(page, "#left-chat .bot"), text_of(page, "#right-chat .bot")
        assert base_answer.strip() and adapter_answer.strip()
        assert base_answer != adapter_answer  # the adapter's column answers with what it learned


def test_preflight_shows_the_length_histogram_and_warns_when_memory_will_not_do(app_url, tiny_llama_dir, tmp_path):
    expected = data_preflight(DATES, AutoTokenizer.from_pretrained(tiny_llama_dir), max_length=64)
    assert 0 < expected.truncated_share < 1  # the tiny tokenizer makes some dates rows longer than 64 tokens
    with browser_page() as page:
        open_tab(page, app_url, "Train")
        page.locator("#sample-select input").click()
        page.get_by_role("option", name="dates").click()
        set_number(page, "max_len", 64)
        page.locator("#preflight-lengths [data-max-length='64'] .max-length").wait_for(state="attached", timeout=60_000)
        lengths = text_of(page, "#preflight-lengths")
        assert f"{expected.truncated_share:.0%} of examples are longer than max length 64" in lengths
        assert page.locator("#preflight-lengths rect.cut").count() >= 1  # the truncated part of the bars
        page.locator("#preflight-memory [data-fits=true]").wait_for(timeout=60_000)
        assert "Estimated peak memory" in text_of(page, "#preflight-memory") and "available on cpu" in text_of(
            page, "#preflight-memory")
        screenshot(page, "train-preflight-histogram")

        # Rows of about 16k tokens, 4096 to a batch (the largest batch the settings take): far more than any RAM
        long_rows = tmp_path / "long rows.jsonl"
        long_rows.write_text("".join(json.dumps({"instruction": "Repeat.", "output": "ab " * 8000}) + "\n"
                                     for _ in range(4)))
        page.locator("#cfg-dataset textarea").fill(str(long_rows))
        page.locator("#cfg-dataset textarea").press("Tab")
        # the new file's own preflight first (every row is longer than 64 tokens), so it cannot land after the one
        # for the settings typed next
        page.locator("#preflight-lengths").get_by_text("100% of examples are longer than max length 64").wait_for(
            timeout=120_000)
        set_number(page, "max_len", 32768)
        set_number(page, "batch_size", 4096)
        page.locator("#preflight-memory [data-fits=false] .lf-warning").wait_for(timeout=60_000)
        warning = text_of(page, "#preflight-memory .lf-warning")
        assert all(fix in warning for fix in ("Batch size", "Max length", "nf4", "Gradient checkpointing"))
        page.locator("#preflight-memory").scroll_into_view_if_needed()
        screenshot(page, "train-preflight-memory-warning")
        assert "Traceback" not in page.content()


def test_form_mistakes_name_the_field_and_a_typed_path_is_read_as_the_preview_reads_it(app_url, web_home, tmp_path):
    """A person's slips in the Train form: spaces around a typed path, a sample's eval file left behind by typing
    another dataset, a rank of 2.5 or 0, a config file with a typo. Each is read sensibly or refused with the
    setting named; nothing starts and the form keeps what was typed."""
    own = tmp_path / "my dates.jsonl"
    own.write_text(DATES.read_text())
    (tmp_path / "typo.yaml").write_text(f"dataset: {DATES}\nrank: banana\n")
    (tmp_path / "broken.yaml").write_text("rank: [unclosed\n  lr: 0.1\n")
    before = len(runs_in(web_home))
    with browser_page() as page:
        open_tab(page, app_url, "Train")
        page.locator("#sample-select input").click()
        page.get_by_role("option", name="dates").click()
        page.get_by_text("Advanced").click()
        page.wait_for_function("() => document.querySelector('#cfg-eval_file textarea')"
                               ".value.endsWith('dates.eval.jsonl')", timeout=60_000)

        page.locator("#cfg-dataset textarea").fill("")
        page.locator("#cfg-dataset textarea").press_sequentially(f"  {own}  ")  # typed, as a person does
        page.wait_for_function("() => document.querySelector('#preflight').innerText.includes('Trainable parameters')",
                               timeout=60_000)  # ready: the spaces did not make the file "not found"
        page.wait_for_function("() => document.querySelector('#cfg-eval_file textarea').value === ''",
                               timeout=60_000)  # the sample's eval file went with the sample

        set_number(page, "lr", 10)  # refused live, as at Start, not only when the run is started
        page.wait_for_function("() => document.querySelector('#preflight').innerText.includes('lr is 10.0')",
                               timeout=60_000)
        set_number(page, "lr", 0.001)
        page.wait_for_function("() => document.querySelector('#preflight').innerText.includes('Trainable parameters')",
                               timeout=60_000)

        for rank, message in (("2.5", "rank in the form is 2.5; it must be a whole number."),
                              ("0", "rank is 0; it must be 1 or more.")):
            set_number(page, "rank", rank)
            page.wait_for_function("m => document.querySelector('#preflight').innerText.includes(m)", arg=message,
                                   timeout=60_000)
            page.locator("#start").click()
            page.get_by_test_id("toast-body").filter(has_text=message).first.wait_for(timeout=60_000)
            page.locator(".toast-close").first.click()

        with page.expect_file_chooser() as chooser:
            page.locator("#load-config").click()
        chooser.value.set_files(str(tmp_path / "typo.yaml"))
        refusal = "rank in typo.yaml is 'banana'; it must be a whole number."  # the file as the person named it
        page.get_by_test_id("toast-body").filter(has_text=refusal).wait_for(timeout=60_000)
        assert page.locator("#cfg-dataset textarea").input_value() == f"  {own}  "  # the form kept what was typed
        assert page.locator("#cfg-rank input").input_value() == "0"
        # and shows it: no "Error" badge covers the fields once the refusal is told in the toast
        assert page.locator('[data-testid="status-tracker"] .error:visible').count() == 0
        assert page.locator("#cfg-dataset textarea").is_visible()

        with page.expect_file_chooser() as chooser:  # not YAML at all: yaml's message quotes "<unicode string>"
            page.locator("#load-config").click()
        chooser.value.set_files(str(tmp_path / "broken.yaml"))
        page.get_by_test_id("toast-body").filter(has_text="line 2, column 5").filter(
            has_text="Fix the line it names.").wait_for(timeout=60_000)  # the whole message, not cut at the "<"
        screenshot(page, "train-broken-config")
        assert page.locator('[data-testid="status-tracker"] .error:visible').count() == 0
        assert "Traceback" not in page.content()
    assert len(runs_in(web_home)) == before


def test_settings_save_as_a_template_without_a_dataset_and_load_back(app_url, web_home):
    """A person keeps their favourite settings before choosing any data: Save needs no dataset, Load brings the
    settings back."""
    with browser_page() as page:
        open_tab(page, app_url, "Train")
        set_number(page, "rank", 32)
        set_number(page, "lr", 0.0005)
        page.locator("#save-config").click()
        page.locator("#config-file").wait_for(state="visible", timeout=60_000)
        saved = web_home / "configs" / "train.yaml"
        values = yaml.safe_load(saved.read_text())
        assert (values["rank"], values["lr"], values["dataset"]) == (32, 0.0005, "")

        set_number(page, "rank", 4)
        with page.expect_file_chooser() as chooser:
            page.locator("#load-config").click()
        chooser.value.set_files(str(saved))
        page.wait_for_function("() => document.querySelector('#cfg-rank input').value === '32'", timeout=60_000)
        assert page.locator("#cfg-lr input").input_value() == "0.0005"
        assert page.get_by_test_id("toast-body").count() == 0  # nothing was refused


def test_the_model_picker_lists_a_models_folder_and_its_choice_becomes_the_base(app_url, web_home, tiny_llama_dir,
                                                                              tmp_path):
    """A person names the folder where their models live, sees each with its family, size and what will work,
    and picks one: the base setting holds its path and the preflight plans for it. A wrong folder is named."""
    models = tmp_path / "my models"
    shutil.copytree(tiny_llama_dir, models / "team" / "llama")
    make_tiny_family(models / "qwen", "qwen2")
    (models / "broken").mkdir()
    (models / "broken" / "config.json").write_text("{not json")
    (models / "broken" / "model.safetensors").write_bytes(b"\0" * 16)
    chosen = models / "team" / "llama"
    with browser_page() as page:
        open_tab(page, app_url, "Train")
        page.locator("#sample-select input").click()
        page.get_by_role("option", name="dates").click()
        page.locator("#models-folder textarea").fill(str(models / "team" / "llama" / "config.json"))
        page.locator("#models-scan").click()
        page.wait_for_function("() => document.querySelector('#models-note').innerText.includes('not a folder')",
                               timeout=60_000)
        assert "is a file, not a folder" in text_of(page, "#models-note")

        page.locator("#models-folder textarea").fill(str(models))
        page.locator("#models-scan").click()
        page.wait_for_function("() => document.querySelector('#models-note').innerText.includes('Found 3')",
                               timeout=60_000)
        assert "Found 3 model(s), 2 trainable" in text_of(page, "#models-note")
        table = text_of(page, "#models-table")
        for shown in ("team/llama", "qwen2", "0.1 M parameters", "per example", "f16, bf16, q8_0",
                      "config.json is not valid JSON"):
            assert shown in table
        screenshot(page, "train-model-picker")

        page.locator("#models-choice input").click()
        page.get_by_role("option", name="team/llama").click()
        page.wait_for_function("p => document.querySelector('#cfg-base textarea').value === p", arg=str(chosen),
                               timeout=60_000)
        page.wait_for_function("p => document.querySelector('#preflight').innerText.includes('not ' + p)",
                               arg=str(chosen), timeout=60_000)  # the preflight plans for the chosen base
        assert "Traceback" not in page.content()

        page.reload()  # the folder is remembered for the next visit
        page.get_by_role("tab", name="Train").click()
        page.wait_for_function("p => document.querySelector('#models-folder textarea').value === p", arg=str(models),
                               timeout=60_000)
    assert json.loads((web_home / "settings.json").read_text())["models_folder"] == str(models)
