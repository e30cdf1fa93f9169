"""
Who may talk to the relay: the Host, Origin and credential checks, without I/O.

- the Host header must name this machine (loopback names, the configured host,
  ``allowed_hosts``), which defeats DNS rebinding;
- a request that carries an ``Origin`` must come from the relay's own origin
  or ``allowed_origins``, which defeats cross-site WebSocket hijacking;
- the client token: non-browser clients send it as ``Authorization: Bearer``;
  the dashboard page the relay serves sets an HttpOnly, SameSite=Strict cookie
  derived from it, for the browser to send with its WebSocket handshake.

``relay.middleware`` applies these checks to every request; docs/security.md
has the threat model.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from starlette.requests import cookie_parser

from common.hosts import LOOPBACK_NAMES, WILDCARD_HOSTS, host_name

if TYPE_CHECKING:
    from .settings import Settings

__all__ = [
    "DEFAULT_PORTS",
    "SecurityPolicy",
    "bearer_token",
    "dashboard_cookie_name",
    "host_allowed",
    "normalize_origin",
    "origin_allowed",
    "own_origins",
]

DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_COOKIE_LABEL: Final = b"usage-monitor dashboard cookie v1"


def host_allowed(host_header: str | None, allowed: frozenset[str]) -> bool:
    """Whether a Host header names this relay (``allowed`` holds ``host_name`` results)."""
    if host_header is None:
        return False
    name = host_name(host_header)
    return name is not None and name in allowed


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` lowercased and without a default port, or None if not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in ("http", "https") or not host or parts.username or parts.password:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return _origin(scheme, host, port)


def _origin(scheme: str, host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    suffix = "" if port is None or port == DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{shown}{suffix}"


def own_origins(hosts: Iterable[str], port: int) -> frozenset[str]:
    """The origins of pages this relay serves on ``port`` under each host name."""
    return frozenset(_origin("http", host, port) for host in hosts)


def origin_allowed(origin: str | None, allowed: frozenset[str]) -> bool:
    """No Origin (not a browser) or one in ``allowed``; "null" and garbage are refused."""
    if origin is None:
        return True
    normalized = normalize_origin(origin)
    return normalized is not None and normalized in allowed


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _same_secret(candidate: str | None, expected: str) -> bool:
    return candidate is not None and hmac.compare_digest(candidate.encode(), expected.encode())


def dashboard_cookie_name(port: int) -> str:
    # Cookies ignore ports: the port in the name keeps two relays' cookies apart.
    return f"usage_monitor_{port}"


@dataclass(frozen=True)
class SecurityPolicy:
    """What the middleware enforces; ``client_token`` is the secret clients present."""

    client_token: str = field(repr=False)
    allowed_hosts: frozenset[str] = LOOPBACK_NAMES
    extra_origins: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings, client_token: str) -> SecurityPolicy:
        hosts = set(LOOPBACK_NAMES)
        for value in (settings.host, *settings.allowed_hosts):
            name = host_name(value)
            if name is not None and name not in WILDCARD_HOSTS:
                hosts.add(name)
        # Settings refused anything that is not an origin.
        origins = frozenset(filter(None, map(normalize_origin, settings.allowed_origins)))
        return cls(client_token, frozenset(hosts), origins)

    @cached_property
    def cookie_value(self) -> str:
        # Derived, so the cookie is not the bearer token itself.
        key = self.client_token.encode()
        return hmac.new(key, _COOKIE_LABEL, hashlib.sha256).hexdigest()

    def origins(self, port: int) -> frozenset[str]:
        return own_origins(self.allowed_hosts, port) | self.extra_origins

    def authenticated(self, headers: Mapping[str, str], port: int) -> bool:
        """A matching bearer token, or the dashboard cookie."""
        if _same_secret(bearer_token(headers.get("authorization")), self.client_token):
            return True
        cookies = cookie_parser(headers.get("cookie", ""))
        return _same_secret(cookies.get(dashboard_cookie_name(port)), self.cookie_value)
