"""`launch.py serve` (also plain `launch.py`, with or without options): load the base model, serve the web app.

Listens on 127.0.0.1 unless told otherwise; another interface requires a login (--auth-file, LORAFORGE_AUTH or
--auth), since anyone who reaches the page can run jobs. The page is mounted behind app.web.guard (foreign
Host or Origin: 403) and serves files from the exports and saved-configs folders only, never LORAFORGE_HOME as
a whole: the database, its WAL and the run folders are not reachable through any route.
"""

import argparse
import asyncio
import hmac
import os
import re
import sys
import time
import webbrowser
from collections.abc import Awaitable, Callable
from pathlib import Path

from app.cli.api import add_api_options, api_key, build_engine
from app.cli.options import add_model_options, load_model
from app.web.guard import WILDCARDS, is_exposed
from app.web.readable import served_folders
from core import paths
from core.errors import LoraForgeError
from core.store.database import DB_NAME

DEFAULT_MAX_UPLOAD = "2gb"
AUTH_ENV = "LORAFORGE_AUTH"
FREE_LOGIN_FAILURES = 3  # failed logins answered at once; each one after that waits twice as long, up to a limit
MAX_LOGIN_DELAY = 30.0
LOGIN_WINDOW = 600.0  # seconds after which a failed login is forgotten


def register(verbs) -> None:
    parser = verbs.add_parser("serve", help="serve the web app (the default verb)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LORAFORGE_PORT", 7860)))
    parser.add_argument("--auth-file", help="a file holding user:password (needed when --host is not loopback)")
    parser.add_argument("--auth", help=f"user:password (visible to every local user in `ps`: prefer --auth-file or "
                                       f"{AUTH_ENV})")
    parser.add_argument("--allowed-host", action="append", default=[],
                        help="another name the page is reached by (a DNS alias), for the Host check; repeatable")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    add_model_options(parser)
    add_api_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    auth = _check_exposure(args.host, _credentials(args))
    max_upload = _max_upload()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    print("Loading the base model…", file=sys.stderr, flush=True)
    key = api_key(args)
    loaded, _ = load_model(args)
    server = build_server(loaded, args.host, args.port, auth, max_upload, args.allowed_host,
                          api=(build_engine(loaded, args), key))
    url = f"http://{'127.0.0.1' if args.host in WILDCARDS else args.host}:{args.port}"
    elsewhere = " (from other machines: this machine's address)" if args.host in WILDCARDS else ""
    print(f"LoRA Forge is ready on {url}{elsewhere}", file=sys.stderr, flush=True)
    if not args.no_browser and _has_display():
        webbrowser.open(url)
    uvicorn.run(server, host=args.host, port=args.port, log_level="warning")
    return 0


def build_server(loaded, host: str, port: int, auth: tuple[str, str] | None, max_upload: str,
                 allowed_hosts: list[str] = (), api: tuple | None = None):
    """The ASGI app: the page mounted in a FastAPI app whose outermost layer is the Host and Origin guard, with
    the OpenAI-compatible routes under /v1 when `api` is (engine, API key or None)."""
    import gradio as gr
    from fastapi import FastAPI

    from app.web.guard import HostGuard, served_hosts
    from app.web.page import STYLESHEET, THEME, build_page  # gradio is slow to import; the other verbs don't need it
    from core.serve.routes import api_router

    server = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    if api is not None:  # before the page, which is mounted at the root and would answer every path
        server.include_router(api_router(loaded, *api, is_exposed(host)))
    page = build_page(loaded).queue(default_concurrency_limit=1)
    gr.mount_gradio_app(
        server, page, path="", server_name=host, server_port=port,
        auth=throttled_login(*auth) if auth else None,
        allowed_paths=[str(folder) for folder in served_folders()],
        blocked_paths=[str(paths.home() / f"{DB_NAME}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")],
        max_file_size=max_upload, theme=THEME, css_paths=[STYLESHEET], show_error=False,
    )
    # Gradio checks the file paths a request names (only uploads may come in, only served folders go out) once
    # a page counts as launched, which mounting alone does not mark.
    page.has_launched = True
    server.add_middleware(HostGuard, hosts=served_hosts(host, allowed_hosts))
    return server


def throttled_login(user: str, password: str) -> Callable[[str, str], Awaitable[bool]]:
    """Gradio's login check: the right user and password, compared in constant time; after a few failures each
    answer is delayed (1, 2, 4 … s, at most MAX_LOGIN_DELAY), one failed answer at a time so that guesses sent in
    parallel wait in turn, without blocking the server."""
    failures: list[float] = []
    turns: list[asyncio.Lock] = []  # made on first use, inside the server's event loop

    async def check(given_user: str, given_password: str) -> bool:
        right = hmac.compare_digest(given_user.encode(), user.encode()) & hmac.compare_digest(
            given_password.encode(), password.encode())
        if right:
            return True
        now = time.monotonic()
        failures[:] = [moment for moment in failures if now - moment < LOGIN_WINDOW] + [now]
        if len(failures) > FREE_LOGIN_FAILURES:
            turns[:] = turns or [asyncio.Lock()]
            async with turns[0]:
                await asyncio.sleep(login_delay(len(failures)))
        return False

    return check


def login_delay(failures: int) -> float:
    """Seconds before answering the `failures`-th failed login in the window."""
    return 0.0 if failures <= FREE_LOGIN_FAILURES else min(2.0 ** (failures - FREE_LOGIN_FAILURES - 1),
                                                           MAX_LOGIN_DELAY)


def _credentials(args: argparse.Namespace) -> str | None:
    """user:password from --auth-file, else LORAFORGE_AUTH, else --auth."""
    if args.auth_file:
        file = Path(args.auth_file).expanduser()
        try:
            return file.read_text(errors="replace")[:4096].strip()
        except OSError as error:
            raise LoraForgeError(f"Cannot read the --auth-file {file}: {error.strerror or error}. Check the path; "
                                 "the file holds one line, user:password.") from None
    return os.environ.get(AUTH_ENV) or args.auth


def _check_exposure(host: str, auth: str | None) -> tuple[str, str] | None:
    if auth is not None:
        user, sep, password = auth.partition(":")
        if not (user and sep and password):
            raise LoraForgeError("--auth must look like user:password, both parts non-empty.")
        return user, password
    if is_exposed(host):
        raise LoraForgeError(
            f"Listening on {host} exposes LoRA Forge to other machines. Add --auth user:password (or "
            f"--auth-file, or {AUTH_ENV}, which `ps` does not show), or leave --host at 127.0.0.1."
        )
    return None


def _max_upload() -> str:
    """The largest upload Gradio accepts (it refuses bigger files with a message): LORAFORGE_MAX_UPLOAD, else 2gb."""
    limit = os.environ.get("LORAFORGE_MAX_UPLOAD", DEFAULT_MAX_UPLOAD).strip().lower()
    if not re.fullmatch(r"[0-9]+ ?(b|kb|mb|gb|tb)", limit):
        raise LoraForgeError(f"LORAFORGE_MAX_UPLOAD={limit!r} is not a size; write it like 500mb or 2gb.")
    return limit


def _has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
