"""What the served app lets through: an upload above LORAFORGE_MAX_UPLOAD is refused with a message a person can
read (in the page and from the upload route), and Gradio's file route serves files under LORAFORGE_HOME only.

One real server with a 1 KB limit (the default is 2gb) and its own LORAFORGE_HOME.
"""

import json
import urllib.error
import urllib.request
import uuid

import pytest

from app.cli.serve import _max_upload
from core.errors import LoraForgeError
from tests.browser import browser_page, screenshot, served_app
from tests.job_helpers import DATES

LIMIT = "1kb"


@pytest.fixture(scope="module")
def web_home(tmp_path_factory):
    return tmp_path_factory.mktemp("web-limits") / "home"


@pytest.fixture(scope="module")
def app_url(web_home, tiny_llama_dir):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAFORGE_MAX_UPLOAD", LIMIT)
        with served_app(web_home, "--model", str(tiny_llama_dir)) as url:
            yield url


def fetch(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    """Status and body of a request, error statuses included."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers or {}), timeout=30) as reply:
            return reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def multipart(name: str, content: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.browser
def test_an_upload_over_the_limit_is_refused_with_a_readable_message(app_url, web_home, tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text("".join(DATES.read_text().splitlines(keepends=True)[:40]))  # about 3 KB of valid rows
    assert big.stat().st_size > 1024
    with browser_page() as page:
        page.goto(app_url)
        page.get_by_role("tab", name="Train").click()
        page.locator("#dataset-upload input[type=file]").set_input_files(str(big))
        toast = page.get_by_test_id("toast-body").filter(has_text="exceed the maximum allowed size")
        toast.wait_for(timeout=60_000)
        assert "1.0 Kb" in toast.inner_text() and "big.jsonl" in toast.inner_text()
        assert page.locator("#cfg-dataset textarea, #cfg-dataset input").first.input_value() == ""
        assert "Traceback" not in page.content()
        screenshot(page, "train-upload-too-big")
    assert not (web_home / "uploads").exists()  # nothing was kept

    status, body = fetch(app_url + "gradio_api/upload", *multipart("big.jsonl", big.read_bytes()))
    assert status == 413 and "maximum allowed size of 1024 bytes" in body  # a script gets the same refusal


@pytest.mark.browser
def test_the_file_route_serves_files_under_the_home_only(app_url, web_home):
    inside = web_home / "configs" / "note.txt"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_text("mine")
    assert fetch(f"{app_url}gradio_api/file={inside}") == (200, "mine")
    for outside in ("/etc/passwd", f"{web_home}/../../../../../etc/passwd"):
        status, body = fetch(f"{app_url}gradio_api/file={outside}")
        assert status == 403 and "root:" not in body and "not allowed" in json.loads(body)["detail"]


def test_a_bad_upload_limit_is_named_before_anything_starts(monkeypatch):
    monkeypatch.setenv("LORAFORGE_MAX_UPLOAD", "lots")
    with pytest.raises(LoraForgeError, match="LORAFORGE_MAX_UPLOAD='lots' is not a size; write it like 500mb"):
        _max_upload()
    monkeypatch.setenv("LORAFORGE_MAX_UPLOAD", " 500MB ")
    assert _max_upload() == "500mb"
