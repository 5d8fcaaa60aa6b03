"""The Hugging Face hub, seen from a machine that may be offline: is a name a hub id, and can we reach it?

Models and datasets both accept hub ids; this module is the one place that says what one looks like and
whether downloading can work, so an offline machine fails fast with the same answer everywhere.
"""

import os
import re
import socket
from urllib.parse import urlparse

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(name: str) -> bool:
    """'organisation/name': a first character that no relative path (./x, ~/x) starts with."""
    return bool(_HUB_ID.match(name))


def hub_unavailable() -> bool:
    """True when HF_HUB_OFFLINE is set or the hub (or HF_ENDPOINT) refuses a connection."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"} or not hub_reachable()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or HF_ENDPOINT) accepts a connection: offline machines fail fast."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
