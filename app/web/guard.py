"""The page answers only itself: requests for another Host, and requests a foreign page sends, are refused.

Browsers guard a page on 127.0.0.1 from other sites by its origin, but a site that rebinds its own name to
127.0.0.1 (DNS rebinding) sends `Host: evil.example`, and Gradio then grants any Origin with credentials. So
before Gradio sees a request:
    Host    must name this server: an IP address (rebinding needs a domain name of the attacker's), localhost,
            the --host given, --allowed-host names, or (listening on every interface) this machine's names
                                                                                              -> else 403
    Origin  when a browser sends one, must be this server's own (scheme, the Host, the port)   -> else 403
The second rule also refuses cross-site uploads and another local page's requests, so no foreign Origin ever
gets a CORS grant.
"""

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
WILDCARDS = {"0.0.0.0", "::", ""}


def served_hosts(host: str, extra: Iterable[str] = ()) -> set[str]:
    """The host names a request may use: loopback, the one listened on, the extra ones given, and for a wildcard
    this machine's own names."""
    host = host.strip().strip("[]")
    names = set(LOOPBACK_NAMES) | {host.lower()} | {host_name(name) or name.lower() for name in extra}
    if host in WILDCARDS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
        except OSError:
            pass
    return names - WILDCARDS


def is_exposed(host: str) -> bool:
    """Whether listening on `host` reaches beyond this machine (anything but localhost or a loopback address)."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_name(value: str) -> str:
    """'Example.org:7860' -> 'example.org'; '[::1]:7860' -> '::1'."""
    parsed = urlsplit(f"//{value}")
    return (parsed.hostname or "").lower()


class HostGuard:
    """ASGI middleware: refuse (403) a request whose Host is not served here or whose Origin is not the page's."""

    def __init__(self, app: ASGIApp, hosts: set[str]) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (problem := self.problem(Headers(scope=scope))):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
            else:
                await PlainTextResponse(problem, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def problem(self, headers: Headers) -> str | None:
        host = headers.get("host", "")
        name = host_name(host)
        if not (_is_ip(name) or name in self.hosts):
            return (f"LoRA Forge does not serve the host {host!r}. Open it at the address it printed when it "
                    "started, or start it with --allowed-host NAME for another name of this machine.")
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return f"LoRA Forge answers only its own page, not requests from {origin!r}."
        return None
