"""The Adapters & Export tab driven in Chromium: import an adapter folder, export it as a merged folder and as a
GGUF f16 file (background jobs: a reload meanwhile finds the export again; a second export onto the first is
refused, and the refusal stays on screen), compose two adapters into a new one,
and see the parity reports in the page; the files are on disk and the store records every job.

One real server serves the tiny random Llama with its own LORAFORGE_HOME; every wait polls with a generous deadline.
"""

import pytest
import torch
from safetensors import safe_open

from app.web.adapters.report import report_markdown
from core.store.database import Store
from tests.browser import browser_page, screenshot, served_app
from tests.export_helpers import make_adapter, make_fine_tuned_copy

pytestmark = pytest.mark.browser
EXPORT_TIMEOUT_MS = 120_000


@pytest.fixture
def web_home(tmp_path):
    return tmp_path / "web-home"


def wait_for_text(page, selector: str, text: str, timeout: int = 60_000) -> None:
    page.wait_for_function("([s, t]) => document.querySelector(s)?.innerText.includes(t)", arg=[selector, text],
                           timeout=timeout)


def wait_for_report(page, text: str) -> str:
    """Wait until the report shows a finished job (it says "status") mentioning `text`; return the report."""
    page.wait_for_function("t => { const r = document.querySelector('#export-report')?.innerText || '';"
                           " return r.includes(t) && r.includes('status'); }", arg=text, timeout=EXPORT_TIMEOUT_MS)
    return page.locator("#export-report").inner_text()


def start_export(page, format_label: str, suffix: str) -> None:
    """Pick a format, wait for the default output folder to follow it, and start the export."""
    page.locator("#export-format").get_by_text(format_label).click()
    page.wait_for_function("s => document.querySelector('#export-out textarea, #export-out input')?.value.endsWith(s)",
                           arg=suffix, timeout=30_000)
    page.locator("#export").click()


def import_in_page(page, folder) -> None:
    page.locator("#import-path textarea, #import-path input").first.fill(str(folder))
    page.locator("#import").click()
    wait_for_text(page, "#adapters-table", folder.name)


def test_person_imports_exports_and_composes_adapters_with_parity(web_home, tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "my-adapter")
    second = make_adapter(tiny_llama_dir, tmp_path / "dates", seed=3, targets="qv")
    with served_app(web_home, "--model", str(tiny_llama_dir)) as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="Adapters & Export").click()
        import_in_page(page, adapter)
        assert "imported" in page.locator("#adapters-table").inner_text()

        page.locator("#export-merged-dtype").get_by_text("fp16").click()
        start_export(page, "Merged model folder", "my-adapter-merged")
        merged = wait_for_report(page, "my-adapter-merged")
        assert "status done" in merged and "agree" in merged and "kept" in merged
        page.locator("#export").click()  # the same export again, onto the finished one: refused, naming the fix
        refused = page.get_by_test_id("toast-body").filter(has_text="already exists and is not empty")
        refused.wait_for(timeout=60_000)
        assert "Force overwrite" in refused.inner_text()
        page.wait_for_timeout(11_000)  # past a toast's usual 10 s: a refusal that names the fix stays until closed
        assert refused.is_visible()
        page.locator(".toast-close").first.click()
        start_export(page, "GGUF file", "my-adapter-gguf")
        wait_for_text(page, "#exports-table", "running")
        screenshot(page, "adapters-export-running")
        page.reload()  # the export goes on in its own process; the page finds it again
        page.get_by_role("tab", name="Adapters & Export").click()
        gguf = wait_for_report(page, "my-adapter-gguf")
        assert "gguf-f16" in gguf and "status done" in gguf and "agree" in gguf and "kept" in gguf
        page.locator("#export-download a, #export-download [download]").first.wait_for(timeout=30_000)
        offered = "".join(page.locator("#export-download").inner_text().split())  # the page breaks long names
        assert "my-adapter-gguf.f16.gguf" in offered and "Modelfile" in offered  # ollama create needs both
        wait_for_text(page, "#exports-table", "gguf-f16")
        screenshot(page, "adapters-export")

        # after the reload nothing is chosen: picking one adapter in a list with a preset choice made a blend
        assert page.locator("#export-adapters .token").count() == 0
        page.locator("#export-adapters input").click()
        page.get_by_role("option", name="my-adapter").click()
        import_in_page(page, second)  # now both are chosen: the one picked and the one imported
        assert page.locator("#export-adapters .token").count() == 2
        page.locator("#export-weights textarea, #export-weights input").first.fill("1, 0.5")
        page.locator("#compose-name textarea, #compose-name input").first.fill("pirate-dates-mix")
        page.locator("#compose").click()
        composed = wait_for_report(page, "pirate-dates-mix")
        assert "Composed the adapter" in composed and "status done" in composed and "agree" in composed
        wait_for_text(page, "#adapters-table", "composed")
        assert "Traceback" not in page.content()
        screenshot(page, "adapters-composed")

    exports_dir = web_home / "exports"
    assert (exports_dir / "my-adapter-merged" / "config.json").is_file()
    with safe_open(exports_dir / "my-adapter-merged" / "model.safetensors", framework="pt") as weights:
        assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.float16}  # as chosen in the page
    assert (exports_dir / "my-adapter-gguf" / "my-adapter-gguf.f16.gguf").is_file()
    assert (exports_dir / "my-adapter-gguf" / "Modelfile").is_file()
    with Store(web_home / "loraforge.db") as store:
        exports = {row["format"]: row for row in store.exports()}
        [mix] = [row for row in store.adapters() if row["name"] == "pirate-dates-mix"]
    assert set(exports) == {"merged", "gguf-f16", "composed"}
    assert all(row["status"] == "done" and row["parity"]["passed"] for row in exports.values())
    assert mix["source"] == "composed" and mix["rank"] == 8 and exports["composed"]["adapter_id"] == mix["id"]
    assert mix["path"] == str(web_home / "adapters" / "pirate-dates-mix")


def test_a_failed_parity_check_is_a_visible_warning_in_the_report():
    check = {"target": "gguf-q8_0", "max_logit_diff": 0.5, "tolerance": 0.01, "greedy_agree": False,
             "greedy_matches": 1, "prompts": 3, "template_same": True,
             "problems": ["gguf-q8_0: greedy answers differ on 2 of 3 prompts"]}
    export = {"id": 1, "format": "gguf-q8_0", "path": "/x/out", "status": "parity_failed", "size_bytes": 2048,
              "parity": {"passed": False, "checks": [check]}}
    report = report_markdown(export)
    assert "DIFFER (1/3 prompts)" in report and "**parity_failed**" in report
    assert "color:#c2410c" in report and "greedy answers differ on 2 of 3 prompts" in report


def test_greedy_answers_a_quantized_export_may_change_are_not_shouted_as_a_difference():
    check = {"target": "gguf-q8_0", "max_logit_diff": 0.005, "tolerance": 0.1, "greedy_agree": False,
             "greedy_required": False, "greedy_matches": 2, "prompts": 3, "template_same": True, "problems": []}
    export = {"id": 2, "format": "gguf-q8_0", "path": "/x/out", "status": "done", "size_bytes": 2048,
              "parity": {"passed": True, "checks": [check]}}
    report = report_markdown(export)
    assert "differ (allowed when quantized) (2/3 prompts)" in report and "DIFFER" not in report
    assert "color:#c2410c" not in report


def test_how_a_reader_was_helped_is_noted_in_the_report():
    note = "rope scaling llama3 from the model's config (transformers' GGUF reader does not read it)"
    check = {"target": "gguf-f16", "max_logit_diff": 0.0004, "tolerance": 0.01, "greedy_agree": True,
             "greedy_matches": 3, "prompts": 3, "template_same": True, "problems": [], "notes": [note]}
    export = {"id": 3, "format": "gguf-f16", "path": "/x/out", "status": "done", "size_bytes": 2048,
              "parity": {"passed": True, "checks": [check]}}
    assert f"Note: gguf-f16: {note}" in report_markdown(export)


def test_a_failed_job_shows_its_error_in_orange():
    export = {"id": 4, "format": "merged", "path": "/x/out", "status": "failed",
              "error": "The disk is full: writing the export /x/out failed"}
    report = report_markdown(export)
    assert "color:#c2410c" in report and "Export 4 (merged) failed: The disk is full" in report


def test_person_extracts_an_adapter_from_a_fine_tuned_folder(web_home, tiny_llama_dir, tmp_path):
    """The Extract action: a fine-tuned copy's folder and an energy share in, a registered adapter out, with its
    comparison against the tuned model in the report."""
    make_fine_tuned_copy(tiny_llama_dir, tmp_path / "tuned")
    with served_app(web_home, "--model", str(tiny_llama_dir)) as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="Adapters & Export").click()
        page.get_by_text("Extract an adapter from a fully fine-tuned model").click()
        page.locator("#extract-tuned textarea").fill(str(tmp_path / "tuned"))
        page.locator("#extract-rank textarea").fill("auto")
        page.locator("#extract-energy textarea").fill("99%")
        page.locator("#extract-name textarea").fill("from-tuned")
        page.locator("#extract").click()
        report = wait_for_report(page, "from-tuned")
        assert "Extracted the adapter" in report and "status done" in report and "agree (3/3" in report
        wait_for_text(page, "#adapters-table", "extracted")
        assert "Traceback" not in page.content()
        screenshot(page, "adapters-extracted")
    with Store(web_home / "loraforge.db") as store:
        [adapter] = store.adapters()
    assert (adapter["name"], adapter["source"], adapter["targets"]) == ("from-tuned", "extracted",
                                                                         ["q_proj", "v_proj"])
