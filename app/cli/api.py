"""`launch.py api`: serve the base model and every registered adapter through OpenAI's API, without the page.

Loopback by default; on any other interface requests need an API key (`Authorization: Bearer <key>`), read from
--api-key-file or LORAFORGE_API_KEY (never a command-line value, which `ps` shows). The web app (`launch.py
serve`) serves the same routes under /v1 on its own port.
"""

import argparse
import os
import sys
from pathlib import Path

from app.cli.options import add_model_options, load_model
from app.web.guard import WILDCARDS, is_exposed
from core.errors import LoraForgeError
from core.serve.routes import KEY_ENV

DEFAULT_PORT = 8000


def register(verbs) -> None:
    parser = verbs.add_parser("api", help="serve the base and every adapter through an OpenAI-compatible API")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--allowed-host", action="append", default=[],
                        help="another name the server is reached by (a DNS alias), for the Host check; repeatable")
    add_api_options(parser)
    add_model_options(parser)
    parser.set_defaults(handler=run)


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """The API's options, shared with `launch.py serve`, which serves the same routes."""
    group = parser.add_argument_group("API (/v1)")
    group.add_argument("--api-key-file", help=f"a file holding the API key clients must send (needed when --host is "
                                              f"not loopback; or set {KEY_ENV})")
    group.add_argument("--max-batch", type=int, default=16, help="requests decoded together (default 16)")
    group.add_argument("--max-waiting", type=int, default=64,
                       help="requests waiting beyond the batch before the server answers 429 (default 64)")
    group.add_argument("--max-batch-tokens", type=int, default=65536,
                       help="rows x (prompt + max_tokens) the batch may hold; a longer request waits for room "
                            "(default 65536)")
    group.add_argument("--max-adapters", type=int, default=8,
                       help="adapters kept loaded; the least recently used is dropped past this (default 8)")


def api_key(args: argparse.Namespace) -> str | None:
    """The key from --api-key-file, else LORAFORGE_API_KEY; None when neither is set."""
    if args.api_key_file:
        file = Path(args.api_key_file).expanduser()
        try:
            key = file.read_text(errors="replace")[:4096].strip()
        except OSError as error:
            raise LoraForgeError(f"Cannot read the --api-key-file {file}: {error.strerror or error}. Check the path; "
                                 "the file holds the key on one line.") from None
        if not key:
            raise LoraForgeError(f"The --api-key-file {file} is empty; write the key in it.")
    else:
        key = os.environ.get(KEY_ENV) or None
    if key is not None and not key.isascii():
        raise LoraForgeError("The API key has characters outside ASCII, which an HTTP header cannot carry as they "
                             "are. Use letters, digits and punctuation.")
    return key


def build_engine(loaded, args: argparse.Namespace):
    from core.serve.engine import Engine

    for option in ("max_batch", "max_waiting", "max_adapters", "max_batch_tokens"):
        if getattr(args, option) < 1:
            raise LoraForgeError(f"--{option.replace('_', '-')} is {getattr(args, option)}; use 1 or more.")
    return Engine(loaded.model, loaded.tokenizer, args.max_batch, args.max_waiting, args.max_adapters,
                  args.max_batch_tokens)


def build_api_server(loaded, engine, host: str, key: str | None, allowed_hosts: list[str] = ()):
    """The ASGI app: the /v1 routes behind the Host and Origin guard (a web page elsewhere cannot call them)."""
    from fastapi import FastAPI

    from app.web.guard import HostGuard, served_hosts
    from core.serve.routes import api_router

    server = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    server.include_router(api_router(loaded, engine, key, is_exposed(host)))
    server.add_middleware(HostGuard, hosts=served_hosts(host, allowed_hosts))
    return server


def run(args: argparse.Namespace) -> int:
    import uvicorn

    key = api_key(args)
    if is_exposed(args.host) and key is None:
        raise LoraForgeError(f"Listening on {args.host} exposes the API to other machines. Set {KEY_ENV} or pass "
                             "--api-key-file with a key clients must send, or leave --host at 127.0.0.1.")
    print("Loading the base model…", file=sys.stderr, flush=True)
    loaded, _ = load_model(args)
    engine = build_engine(loaded, args)
    server = build_api_server(loaded, engine, args.host, key, args.allowed_host)
    shown = "127.0.0.1" if args.host in WILDCARDS else args.host
    print(f"LoRA Forge's API is ready on http://{shown}:{args.port}/v1 (model 'base' or an adapter's name)",
          file=sys.stderr, flush=True)
    uvicorn.run(server, host=args.host, port=args.port, log_level="warning")
    return 0
