"""The served app, tried as an attacker on loopback would (shared/reference/security-probes.md, D1-D3), over real
HTTP against real server processes: no route serves the database, with or without a login; a foreign Host (DNS
rebinding) or a foreign Origin is refused before Gradio sees it, and gets no CORS grant; logins are throttled."""

import asyncio
import http.client
import json
import re
from pathlib import Path
from urllib.parse import quote, urlparse

import pytest
from starlette.routing import Mount

from app.cli.serve import build_server, login_delay, throttled_login
from core.models.loading import load_base_model
from core.serve.engine import Engine
from tests.browser import served_app

SQLITE_MAGIC = b"SQLite format 3"
USER, PASSWORD = "forge", "s3cret-pass"


def request(url: str, path: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
    """(status, headers, the start of the body) of one raw HTTP request to the server at `url`, the headers
    exactly as given (a stream route answers for as long as it is read: its start is what is looked at)."""
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Host": parsed.netloc, **(headers or {})})
        reply = connection.getresponse()
        connection.sock.settimeout(2)
        try:
            start = reply.read1(1 << 16)
        except TimeoutError:  # a stream that has sent nothing yet
            start = b""
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, start
    finally:
        connection.close()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory, tiny_llama_dir):
    home = tmp_path_factory.mktemp("safety-open") / "home"
    with served_app(home, "--model", str(tiny_llama_dir)) as url:
        yield url, home


@pytest.fixture(scope="module")
def login_server(tmp_path_factory, tiny_llama_dir):
    home = tmp_path_factory.mktemp("safety-login") / "home"
    secret = home.parent / "auth.txt"
    secret.write_text(f"{USER}:{PASSWORD}\n")
    with served_app(home, "--model", str(tiny_llama_dir), "--auth-file", str(secret)) as url:
        yield url, home


@pytest.fixture(scope="module")
def route_paths(tiny_llama_dir, tmp_path_factory, open_server) -> list[str]:
    """Every route the served app has (the same build_server the servers run), the page's own mount included."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAFORGE_HOME", str(tmp_path_factory.mktemp("routes-home")))
        loaded = load_base_model(str(tiny_llama_dir))
        app = build_server(loaded, "127.0.0.1", 7860, None, "2gb", api=(Engine(loaded.model, loaded.tokenizer), None))

    def walk(routes, prefix=""):
        for route in routes:
            if isinstance(route, Mount):
                yield from walk(route.routes, prefix + route.path)
            elif hasattr(route, "original_router"):  # an included router (Gradio's /gradio_api/...)
                yield from walk(route.original_router.routes, prefix)
            elif hasattr(route, "path"):
                yield prefix + route.path

    return sorted(set(walk(app.routes)))


def db_requests(paths: list[str], home: Path) -> list[str]:
    """Each route with every parameter naming the database (and its WAL and SHM), as a file route would take it."""
    targets = [str(home / name) for name in ("loraforge.db", "loraforge.db-wal", "loraforge.db-shm")]
    asked = set()
    for path in paths:
        for target in targets:
            for form in (target, target.lstrip("/"), quote(target, safe="")):
                asked.add(re.sub(r"\{[^}]+\}", lambda _, form=form: form, path))
    return sorted(asked)


def login_cookie(url: str) -> str:
    status, headers, _ = request(url, "/login", "POST", {"Content-Type": "application/x-www-form-urlencoded"},
                                 f"username={USER}&password={PASSWORD}".encode())
    assert status == 200, status
    return "; ".join(part.split(";")[0] for part in headers["set-cookie"].split(", ") if "=" in part.split(";")[0])


@pytest.mark.browser  # a real server process
def test_no_route_serves_the_database_with_or_without_a_login(route_paths, open_server, login_server):
    assert "/gradio_api/file={path_or_url:path}" in route_paths and "/v1/chat/completions" in route_paths
    assert len(route_paths) > 60
    for (url, home), cookie in ((open_server, None), (login_server, login_cookie(login_server[0]))):
        assert (home / "loraforge.db").is_file()
        for path in db_requests(route_paths, home):
            status, _, body = request(url, path, headers={"Cookie": cookie} if cookie else {})
            assert SQLITE_MAGIC not in body[:100], (path, status)
        status, _, body = request(url, f"/gradio_api/file={home}/loraforge.db")
        assert status in (401, 403) and SQLITE_MAGIC not in body


@pytest.mark.browser  # a real server process
def test_what_a_person_may_download_is_still_served(open_server):
    url, home = open_server
    (home / "exports" / "note.txt").write_text("exported")
    assert request(url, f"/gradio_api/file={home}/exports/note.txt")[::2] == (200, b"exported")
    (home / "runs").mkdir(exist_ok=True)
    (home / "runs" / "config.yaml").write_text("dataset: /secret/path.jsonl\n")
    status, _, body = request(url, f"/gradio_api/file={home}/runs/config.yaml")
    assert status == 403 and b"secret" not in body


@pytest.mark.browser  # a real server process
@pytest.mark.parametrize("path, method", [("/", "GET"), ("/config", "GET"), ("/gradio_api/info", "GET"),
                                          ("/gradio_api/queue/join", "POST")])
def test_a_foreign_host_is_refused_before_gradio_sees_it(open_server, path, method):
    """DNS rebinding: a site whose name now points at 127.0.0.1 sends its own name as Host, and its own Origin."""
    url, _ = open_server
    port = urlparse(url).port
    for origin in (f"http://evil.example:{port}", "http://other.example"):
        status, headers, body = request(url, path, method, {"Host": f"evil.example:{port}", "Origin": origin,
                                                            "Content-Type": "application/json"}, b"{}")
        assert status == 403 and b"does not serve the host" in body
        assert "access-control-allow-origin" not in headers
    assert request(url, "/config")[0] == 200  # its own Host, no Origin: the page works
    assert request(url, "/config", headers={"Host": f"localhost:{port}"})[0] == 200


@pytest.mark.browser  # a real server process
def test_a_foreign_origin_gets_no_cors_grant_and_cannot_upload(open_server):
    url, home = open_server
    port = urlparse(url).port
    for origin in ("http://localhost:9999", "null", "http://evil.example"):
        status, headers, _ = request(url, "/gradio_api/queue/join", "OPTIONS",
                                     {"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert status == 403 and "access-control-allow-origin" not in headers
        body = b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.jsonl"\r\n\r\n{}\r\n--b--\r\n'
        status, headers, reply = request(url, "/gradio_api/upload", "POST",
                                         {"Origin": origin, "Content-Type": "multipart/form-data; boundary=b"}, body)
        assert status == 403 and b"only its own page" in reply and "access-control-allow-origin" not in headers
    status, _, reply = request(url, "/config", headers={"Origin": f"http://127.0.0.1:{port}"})
    assert status == 200 and b"components" in reply  # the page's own requests


@pytest.mark.browser  # a real server process
def test_the_password_file_logs_in_and_is_not_on_the_command_line(login_server):
    url, _ = login_server
    assert request(url, "/config")[0] == 401
    assert request(url, "/config", headers={"Cookie": login_cookie(url)})[0] == 200
    assert PASSWORD.encode() not in Path(f"/proc/{_server_pid(url)}/cmdline").read_bytes()


def _server_pid(url: str) -> int:
    port = urlparse(url).port
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                line = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in line and str(port).encode() in line:
                return int(proc.name)
    raise AssertionError(f"no server process on port {port}")


def test_failed_logins_are_slowed_down_and_the_right_one_is_not(monkeypatch):
    waits = []

    async def no_wait(seconds):
        waits.append(seconds)

    monkeypatch.setattr("app.cli.serve.asyncio.sleep", no_wait)
    check = throttled_login(USER, PASSWORD)
    results = [asyncio.run(check(USER, f"wrong{i}")) for i in range(6)]
    assert results == [False] * 6 and waits == [login_delay(n) for n in range(4, 7)] == [1.0, 2.0, 4.0]
    assert asyncio.run(check(USER, PASSWORD)) and waits == [1.0, 2.0, 4.0]
    assert login_delay(40) == 30.0


def read_stream(url: str, path: str, until: bytes = b"event: ", seconds: float = 60) -> bytes:
    """A server-sent-event stream of the page's API, read until an event arrives (or `seconds` pass)."""
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=seconds)
    try:
        connection.request("GET", path, headers={"Host": parsed.netloc})
        reply, seen = connection.getresponse(), b""
        while until not in seen or not seen.endswith(b"\n\n"):
            piece = reply.read1(1 << 16)
            if not piece:
                break
            seen += piece
        return seen
    finally:
        connection.close()


@pytest.mark.browser  # a real server process
def test_a_request_cannot_pass_a_server_file_off_as_its_upload(open_server, tmp_path):
    """Gradio refuses a file a request names unless it was uploaded, but only once the page counts as launched,
    which mounting alone did not mark: the upload handler then copied any server file into LORAFORGE_HOME."""
    url, home = open_server
    secret = tmp_path / ".aws" / "creds.csv"
    secret.parent.mkdir()
    secret.write_text("key,value\nsecret,1\n")
    body = json.dumps({"data": [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}]}).encode()
    status, _, reply = request(url, "/gradio_api/call/keep_upload", "POST", {"Content-Type": "application/json"},
                               body)
    assert status == 200, reply
    stream = read_stream(url, f"/gradio_api/call/keep_upload/{json.loads(reply)['event_id']}")
    assert b"event: error" in stream and b"secret" not in stream
    assert not list(home.rglob("creds.csv"))


def test_an_address_of_this_machine_is_served_when_listening_everywhere_and_a_foreign_name_is_not():
    from starlette.datastructures import Headers

    from app.web.guard import HostGuard, served_hosts

    guard = HostGuard(None, served_hosts("0.0.0.0", ["forge.lan", "[fd00::9]:7860"]))
    for host in ("192.0.2.2:7860", "[fd00::2]:7860", "127.0.0.1:7860", "localhost:7860", "forge.lan:7860",
                 "FORGE.LAN", "[fd00::9]"):
        assert guard.problem(Headers({"host": host})) is None, host
    for host in ("evil.example:7860", "", "localhost.evil.example", "forge.lan.evil.example"):
        assert "does not serve the host" in guard.problem(Headers({"host": host})), host
    assert "--allowed-host" in guard.problem(Headers({"host": "evil.example"}))
