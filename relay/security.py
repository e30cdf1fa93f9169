"""
Access control for the relay: who may talk to it, and with which credentials.

Three layers, all on by default (see docs/security.md for the threat model):

- the Host header must name this machine (loopback names, the configured host,
  ``allowed_hosts``), which defeats DNS rebinding;
- a WebSocket handshake (or any HTTP request) that carries an ``Origin`` must
  come from the relay's own origin or ``allowed_origins``, which defeats
  cross-site WebSocket hijacking;
- the client token: non-browser clients send it as ``Authorization: Bearer``;
  the dashboard page the relay serves sets an HttpOnly, SameSite=Strict cookie
  derived from it, for the browser to send with its WebSocket handshake.

The checks are pure functions; ``SecurityMiddleware`` applies them in the ASGI
layer, before Starlette routes anything. It refuses a bad Host or Origin with
HTTP 403 (for a WebSocket, before the upgrade), answers an unauthenticated
``/api/`` request with 401, and records for the endpoints whether the request
is authenticated (``is_authenticated(scope)``): the WebSocket endpoint then
answers ``unauthorized`` and closes after a grace period.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import stat
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .exceptions import RelayError
from .limits import Rate, RateLimiter, Verdict
from .settings import Settings, config_dir

__all__ = [
    "CLIENT_TOKEN_ENV",
    "DASHBOARD_PATHS",
    "LOOPBACK_NAMES",
    "ClientTokenError",
    "SecurityMiddleware",
    "SecurityPolicy",
    "bearer_token",
    "client_token_path",
    "default_client_token_path",
    "find_socket_owner",
    "host_allowed",
    "host_name",
    "is_authenticated",
    "load_or_create_client_token",
    "normalize_origin",
    "origin_allowed",
    "own_origins",
    "peer_is_same_user",
    "read_client_token",
]

logger = logging.getLogger("usage_monitor.relay")

#: Names a path to the client token file, overriding the default.
CLIENT_TOKEN_ENV: Final = "USAGE_MONITOR_CLIENT_TOKEN_FILE"
#: Names that always reach this machine.
LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
#: The dashboard page: serving it sets the cookie.
DASHBOARD_PATHS: Final = frozenset({"/", "/index.html"})
#: Where the middleware records whether a request is authenticated.
AUTHENTICATED_KEY: Final = "usage_monitor.authenticated"

_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_COOKIE_LABEL: Final = b"usage-monitor dashboard cookie v1"
_MAX_TOKEN_LENGTH: Final = 1024
_MAX_LOGGED: Final = 80


class ClientTokenError(RelayError):
    """The client token file is unsafe or unreadable; the message says what to do."""


# -- the client token file ------------------------------------------------------


def default_client_token_path() -> Path:
    """``$USAGE_MONITOR_CLIENT_TOKEN_FILE``, else ``client-token`` in the config directory."""
    override = os.environ.get(CLIENT_TOKEN_ENV)
    return Path(override) if override else config_dir() / "client-token"


def client_token_path(settings: Settings) -> Path:
    return settings.client_token_file or default_client_token_path()


def load_or_create_client_token(path: Path) -> str:
    """Return the token in ``path``, creating the file (0600) with a new token if missing.

    Creation is atomic: a concurrent start sees either no file or the whole token.
    """
    try:
        return _read_token_file(path, strict=True)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".client-token-")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(token + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)  # fails if another process created it meanwhile
        except FileExistsError:
            return _read_token_file(path, strict=True)
    finally:
        os.unlink(temporary)
    logger.info("created a client token in %s (readable only by you)", path)
    return token


def read_client_token(path: Path | None = None) -> str | None:
    """The client token for a client to send, or None if the relay never created one.

    ``path`` defaults to ``default_client_token_path()``. Raises
    ``ClientTokenError`` if the file exists but cannot be used.
    """
    try:
        return _read_token_file(path or default_client_token_path(), strict=False)
    except FileNotFoundError:
        return None


def _read_token_file(path: Path, *, strict: bool) -> str:
    """Read a token; with ``strict`` (the relay) refuse a file others could read or swap."""
    # The relay does not follow a symlink: someone else could point it elsewhere.
    flags = os.O_RDONLY | (getattr(os, "O_NOFOLLOW", 0) if strict else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ClientTokenError(f"cannot read the client token file {path}: {exc}") from None
    with os.fdopen(fd, encoding="ascii", errors="replace") as file:
        info = os.fstat(file.fileno())
        if strict and os.name == "posix":
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                raise ClientTokenError(f"{path} is not a regular file of yours; remove it")
            if info.st_mode & 0o077:
                raise ClientTokenError(
                    f"{path} can be read by other users, who may have copied the token: "
                    "delete the file (a new token is created at the next start) "
                    "or make it private with `chmod 600`"
                )
        token = file.read(_MAX_TOKEN_LENGTH + 1).strip()
    if not token or len(token) > _MAX_TOKEN_LENGTH or not token.isprintable() or " " in token:
        raise ClientTokenError(
            f"{path} does not hold a usable token; delete it and a new one is created"
        )
    return token


# -- pure checks ------------------------------------------------------------------


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
    suffix = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
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


# -- who is on the other end of a loopback connection (Linux) ------------------------


def _proc_address(host: str, port: int) -> tuple[int, str] | None:
    """(IP version, the address as /proc/net/tcp* prints it) or None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    packed = ip.packed
    # The kernel prints each 32-bit word of the address in host byte order.
    words = [packed[i : i + 4] for i in range(0, len(packed), 4)]
    if sys.byteorder == "little":
        words = [word[::-1] for word in words]
    return ip.version, f"{b''.join(words).hex().upper()}:{port:04X}"


def find_socket_owner(table: str, local: str, remote: str) -> int | None:
    """The uid of the socket whose local and remote addresses match, in /proc/net/tcp format."""
    for line in table.splitlines()[1:]:
        columns = line.split()
        if len(columns) > 7 and columns[1] == local and columns[2] == remote:
            try:
                return int(columns[7])
            except ValueError:
                return None
    return None


def peer_is_same_user(client: tuple[str, int], server: tuple[str, int]) -> bool | None:
    """Whether the client's socket belongs to this process's user; None if the OS cannot say.

    Reads /proc/net/tcp (Linux). The client's own socket has the client's
    address as its local one and the server's as its remote one.
    """
    local = _proc_address(*client)
    remote = _proc_address(*server)
    if local is None or remote is None or local[0] != remote[0]:
        return False
    table_path = Path("/proc/net/tcp" if local[0] == 4 else "/proc/net/tcp6")
    try:
        table = table_path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return find_socket_owner(table, local[1], remote[1]) == os.geteuid()


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the policy and its middleware ---------------------------------------------------


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
            if name is not None and name not in _WILDCARD_HOSTS:
                hosts.add(name)
        origins = set()
        for value in settings.allowed_origins:
            origin = normalize_origin(value)
            if origin is None:
                raise ValueError(
                    f"allowed_origins: {value!r} is not an origin (scheme://host:port)"
                )
            origins.add(origin)
        return cls(client_token, frozenset(hosts), frozenset(origins))

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


def is_authenticated(scope: Scope) -> bool:
    """What ``SecurityMiddleware`` decided for this request (False if it did not run)."""
    return scope.get(AUTHENTICATED_KEY) is True


class _Refusals:
    """Logs refusals, but no more than a few lines a minute however many there are."""

    def __init__(self) -> None:
        self._limiter = RateLimiter(Rate(per_second=0.1, burst=10))
        self._unlogged = 0

    def log(self, message: str, *args: object) -> None:
        if self._limiter.check() is not Verdict.ALLOWED:
            self._unlogged += 1
            return
        if self._unlogged:
            message += " (%d similar refusals not logged)"
            args = (*args, self._unlogged)
            self._unlogged = 0
        logger.warning(message, *args)


def _shown(value: str | None) -> str:
    """Client text for a log line: quoted and short."""
    if value is None:
        return "none"
    return repr(value if len(value) <= _MAX_LOGGED else value[:_MAX_LOGGED] + "…")


class SecurityMiddleware:
    """Pure ASGI: the Host, Origin and token checks in front of the whole app."""

    def __init__(self, app: ASGIApp, policy: SecurityPolicy) -> None:
        self.app = app
        self.policy = policy
        self._refusals = _Refusals()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers, duplicated = _headers(scope)
        port = _server_port(scope)
        kind = "WebSocket handshake" if scope["type"] == "websocket" else "request"
        host = None if "host" in duplicated else headers.get("host")
        if not host_allowed(host, self.policy.allowed_hosts):
            self._refusals.log("refused a %s for Host %s", kind, _shown(host))
            await _forbid(scope, send, "unexpected Host header")
            return
        origin = None if "origin" in duplicated else headers.get("origin")
        if "origin" in duplicated or not origin_allowed(origin, self.policy.origins(port)):
            self._refusals.log("refused a %s from origin %s", kind, _shown(origin))
            await _forbid(scope, send, "origin not allowed")
            return
        authenticated = self.policy.authenticated(headers, port)
        scope[AUTHENTICATED_KEY] = authenticated
        path: str = scope["path"]
        if scope["type"] == "http" and path.startswith("/api/") and not authenticated:
            await _unauthorized(send)
            return
        if scope["type"] == "http" and self._may_set_cookie(scope, path):
            send = self._with_cookie(send, port)
        await self.app(scope, receive, send)

    def _may_set_cookie(self, scope: Scope, path: str) -> bool:
        """Only for the dashboard page, fetched by a process of this user on this machine."""
        client, server = scope.get("client"), scope.get("server")
        if scope["method"] != "GET" or path not in DASHBOARD_PATHS or not client or not server:
            return False
        host, port = client
        if not _is_loopback_address(host) or server[1] is None:
            return False
        same_user = peer_is_same_user((host, port), (server[0], server[1]))
        if same_user is False:
            self._refusals.log("no dashboard cookie for %s: another user's process", host)
        return same_user is not False

    def _with_cookie(self, send: Send, port: int) -> Send:
        cookie = (
            f"{dashboard_cookie_name(port)}={self.policy.cookie_value}; "
            "Path=/; HttpOnly; SameSite=Strict"
        )

        async def send_with_cookie(message: Message) -> None:
            # 304 too: a revalidated page must still (re)set the session cookie.
            if message["type"] == "http.response.start" and message["status"] in (200, 304):
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())],
                }
            await send(message)

        return send_with_cookie


def _headers(scope: Scope) -> tuple[dict[str, str], set[str]]:
    """Headers by lowercase name, and the names that came more than once."""
    headers: dict[str, str] = {}
    duplicated: set[str] = set()
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        if name in headers:
            duplicated.add(name)
        headers[name] = raw_value.decode("latin-1")
    return headers, duplicated


def _server_port(scope: Scope) -> int:
    server = scope.get("server")
    if server and server[1] is not None:
        return int(server[1])
    return _DEFAULT_PORTS.get(scope.get("scheme", "http"), 80)


async def _forbid(scope: Scope, send: Send, reason: str) -> None:
    body = f"403 Forbidden: {reason} (see docs/security.md)\n".encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": 403, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:  # closing before the handshake makes the server answer 403
        await send({"type": "websocket.close", "code": 1008})


async def _unauthorized(send: Send) -> None:
    body = (
        b'{"type":"result","id":null,"ok":false,"error":{"code":"unauthorized",'
        b'"message":"send the client token as \'Authorization: Bearer <token>\'"}}'
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"www-authenticate", b'Bearer realm="usage-monitor"'),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
