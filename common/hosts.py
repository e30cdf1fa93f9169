"""Host names and addresses: which ones stay on this machine."""

from __future__ import annotations

import ipaddress
from typing import Final
from urllib.parse import urlsplit

__all__ = ["LOOPBACK_NAMES", "WILDCARD_HOSTS", "host_name", "is_http_url", "is_loopback_host"]

#: Names that always reach this machine.
LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
#: Addresses that bind every interface; a client reaches them on loopback.
WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})


def host_name(value: str) -> str | None:
    """The host part of a Host header (or name), lowercased, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1 :] and not value[end + 1 :].startswith(":")):
            return None
        name = value[1:end]
    elif value.count(":") > 1:
        name = value  # a bare IPv6 address
    else:
        name = value.partition(":")[0]
    name = name.rstrip(".")
    return name or None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine only ("localhost" or a loopback IP)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_http_url(url: str) -> bool:
    """Whether ``url`` is an ``http://`` or ``https://`` URL with a host."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
