"""Helpers for browser tests: a real LoRA Forge server process and Debian's Chromium driven by Playwright."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    """The browser to drive; in CI a missing browser is a failure, elsewhere the browser tests skip."""
    path = os.environ.get("LORAFORGE_CHROMIUM") or shutil.which("chromium")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; `make test` installs it with apt-get")
    pytest.skip("no chromium: set LORAFORGE_CHROMIUM=/path/to/chromium to run the browser tests")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_log(home: Path, url: str) -> str:
    """What the server `served_app(home)` started at `url` has printed so far."""
    return (home.parent / f"server-{urlparse(url).port}.log").read_text()


@contextmanager
def served_app(home: Path, *extra_args: str, startup_timeout: float = 240, verb: str = "serve",
               ready_path: str = "", ready_status: int = 200):
    """Start `launch.py serve` (or `verb`) in its own process group; yield its URL once the page (or `ready_path`)
    answers with `ready_status`; stop it after."""
    port = free_port()
    log = open(home.parent / f"server-{port}.log", "w")
    options = ["--no-browser"] if verb == "serve" else []
    process = subprocess.Popen(
        [sys.executable, "launch.py", verb, *options, "--port", str(port), *extra_args],
        cwd=REPO, env={**os.environ, "LORAFORGE_HOME": str(home)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}: {Path(log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + ready_path, timeout=2) as response:
                    if response.status == ready_status:
                        break
            except urllib.error.HTTPError as error:
                if error.code == ready_status:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not answer in {startup_timeout} s: {Path(log.name).read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@contextmanager
def browser_page():
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:
    """Keep a picture of what the person saw, for looking at after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
