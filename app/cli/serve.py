"""`launch.py serve` (also plain `launch.py`): load the base model, then serve the web app.

Listens on 127.0.0.1 unless told otherwise; another interface requires --auth, since anyone who
reaches the page can run jobs and read files under LORAFORGE_HOME.
"""

import argparse
import ipaddress
import os
import re
import sys

from app.cli.options import add_model_options, load_model
from core import paths
from core.errors import LoraForgeError

DEFAULT_MAX_UPLOAD = "2gb"


def register(verbs) -> None:
    parser = verbs.add_parser("serve", help="serve the web app (the default verb)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LORAFORGE_PORT", 7860)))
    parser.add_argument("--auth", help="user:password, required when --host is not a loopback address")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    add_model_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    auth = _check_exposure(args.host, args.auth)
    max_upload = _max_upload()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.web.page import STYLESHEET, THEME, build_page  # gradio is slow to import; the other verbs don't need it

    print("Loading the base model…", file=sys.stderr, flush=True)
    loaded, _ = load_model(args)
    page = build_page(loaded)
    print(f"LoRA Forge is ready on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    page.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        auth=auth,
        inbrowser=not args.no_browser and _has_display(),
        share=False,
        allowed_paths=[str(paths.home())],
        max_file_size=max_upload,
        theme=THEME,
        css_paths=[STYLESHEET],
        show_error=False,
        quiet=True,
    )
    return 0


def _check_exposure(host: str, auth: str | None) -> tuple[str, str] | None:
    if auth is not None:
        user, sep, password = auth.partition(":")
        if not (user and sep and password):
            raise LoraForgeError("--auth must look like user:password, both parts non-empty.")
        return user, password
    if host != "localhost" and not _is_loopback(host):
        raise LoraForgeError(
            f"Listening on {host} exposes LoRA Forge to other machines. Add --auth user:password, "
            "or leave --host at 127.0.0.1."
        )
    return None


def _max_upload() -> str:
    """The largest upload Gradio accepts (it refuses bigger files with a message): LORAFORGE_MAX_UPLOAD, else 2gb."""
    limit = os.environ.get("LORAFORGE_MAX_UPLOAD", DEFAULT_MAX_UPLOAD).strip().lower()
    if not re.fullmatch(r"[0-9]+ ?(b|kb|mb|gb|tb)", limit):
        raise LoraForgeError(f"LORAFORGE_MAX_UPLOAD={limit!r} is not a size; write it like 500mb or 2gb.")
    return limit


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
