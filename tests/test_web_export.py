"""The Adapters & Export tab driven in Chromium: import an adapter folder, export it as a merged folder and as a
GGUF f16 file, and see the parity report in the page; the files are on disk and the store records both exports.

One real server serves the tiny random Llama with its own LORAFORGE_HOME; every wait polls with a generous deadline.
"""

import pytest

from app.tab_adapters import report_markdown
from core.export import ExportResult
from core.store import Store
from tests.browser import browser_page, screenshot, served_app
from tests.export_helpers import make_adapter

pytestmark = pytest.mark.browser
EXPORT_TIMEOUT_MS = 120_000


@pytest.fixture
def web_home(tmp_path):
    return tmp_path / "web-home"


def wait_for_text(page, selector: str, text: str, timeout: int = 60_000) -> None:
    page.wait_for_function("([s, t]) => document.querySelector(s)?.innerText.includes(t)", arg=[selector, text],
                           timeout=timeout)


def export_in_page(page, format_label: str, suffix: str) -> str:
    """Pick a format, wait for the default output folder to follow it, export, and return the report's text."""
    page.locator("#export-format").get_by_text(format_label).click()
    page.wait_for_function("s => document.querySelector('#export-out textarea, #export-out input')?.value.endsWith(s)",
                           arg=suffix, timeout=30_000)
    page.locator("#export").click()
    wait_for_text(page, "#export-report", suffix, EXPORT_TIMEOUT_MS)
    return page.locator("#export-report").inner_text()


def test_person_imports_an_adapter_and_exports_merged_and_gguf_with_parity(web_home, tiny_llama_dir, tmp_path):
    adapter = make_adapter(tiny_llama_dir, tmp_path / "my-adapter")
    with served_app(web_home, "--model", str(tiny_llama_dir)) as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="Adapters & Export").click()
        page.locator("#import-path textarea, #import-path input").first.fill(str(adapter))
        page.locator("#import").click()
        wait_for_text(page, "#adapters-table", "my-adapter")
        assert "imported" in page.locator("#adapters-table").inner_text()

        merged = export_in_page(page, "Merged model folder", "my-adapter-merged")
        assert "status done" in merged and "agree" in merged and "kept" in merged
        gguf = export_in_page(page, "GGUF file", "my-adapter-gguf")
        assert "gguf-f16" in gguf and "status done" in gguf and "agree" in gguf and "kept" in gguf
        page.locator("#export-download a, #export-download [download]").first.wait_for(timeout=30_000)
        wait_for_text(page, "#exports-table", "gguf-f16")
        assert "Traceback" not in page.content()
        screenshot(page, "adapters-export")

    exports_dir = web_home / "exports"
    assert (exports_dir / "my-adapter-merged" / "config.json").is_file()
    assert list((exports_dir / "my-adapter-merged").glob("*.safetensors"))
    assert (exports_dir / "my-adapter-gguf" / "my-adapter-gguf.f16.gguf").is_file()
    assert (exports_dir / "my-adapter-gguf" / "Modelfile").is_file()
    with Store(web_home / "loraforge.db") as store:
        exports = {row["format"]: row for row in store.exports()}
    assert set(exports) == {"merged", "gguf-f16"}
    assert all(row["status"] == "done" and row["parity"]["passed"] for row in exports.values())


def test_a_failed_parity_check_is_a_visible_warning_in_the_report():
    check = {"target": "gguf-q8_0", "max_logit_diff": 0.5, "tolerance": 0.01, "greedy_agree": False,
             "greedy_matches": 1, "prompts": 3, "template_same": True}
    result = ExportResult("gguf-q8_0", "/x/out", "parity_failed", {"passed": False, "checks": [check]}, 1, 2048,
                          ["parity check failed: greedy answers differ on 2 of 3 prompts"])
    report = report_markdown(result)
    assert "DIFFER (1/3 prompts)" in report and "**parity_failed**" in report
    assert "color:#c2410c" in report and "greedy answers differ on 2 of 3 prompts" in report
