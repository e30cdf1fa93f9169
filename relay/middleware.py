"""
``SecurityMiddleware``: the checks of ``relay.policy`` in front of the whole app.

Pure ASGI, before Starlette routes anything. It refuses a bad Host or Origin
with HTTP 403 (for a WebSocket, before the upgrade), answers an
unauthenticated ``/api/`` request with 401, and records for the endpoints
whether the request is authenticated (``is_authenticated(scope)``): the
WebSocket endpoint then answers ``unauthorized`` and closes after a grace
period. However many refusals come, the first ten of a minute are logged in
full, then one line a minute with their count (``relay.refusals``).
"""

from __future__ import annotations

import logging
from typing import Final

import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.messages import ErrorCode

from .exceptions import RequestError
from .peers import is_loopback_address, peer_is_same_user
from .policy import (
    DEFAULT_PORTS,
    SecurityPolicy,
    dashboard_cookie_name,
    host_allowed,
    origin_allowed,
)
from .protocol import encode_error
from .refusals import Refusals

__all__ = ["DASHBOARD_PATHS", "SecurityMiddleware", "is_authenticated"]

logger = logging.getLogger("usage_monitor.relay")

#: The dashboard page: serving it sets the cookie.
DASHBOARD_PATHS: Final = frozenset({"/", "/index.html"})
#: Where the middleware records whether a request is authenticated.
AUTHENTICATED_KEY: Final = "usage_monitor.authenticated"

_MAX_LOGGED: Final = 80
_UNAUTHORIZED: Final = encode_error(
    RequestError(ErrorCode.UNAUTHORIZED, "send the client token as 'Authorization: Bearer <token>'")
).encode()


def is_authenticated(scope: Scope) -> bool:
    """What ``SecurityMiddleware`` decided for this request (False if it did not run)."""
    return scope.get(AUTHENTICATED_KEY) is True


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
        self._refusals = Refusals("requests", burst=10)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers, duplicated = _headers(scope)
        port = _server_port(scope)
        kind = "WebSocket handshake" if scope["type"] == "websocket" else "request"
        host = None if "host" in duplicated else headers.get("host")
        if not host_allowed(host, self.policy.allowed_hosts):
            self._refusals.log(
                "for an unexpected Host", "refused a %s for Host %s", kind, _shown(host)
            )
            await _forbid(scope, send, "unexpected Host header")
            return
        origin = None if "origin" in duplicated else headers.get("origin")
        if "origin" in duplicated or not origin_allowed(origin, self.policy.origins(port)):
            self._refusals.log(
                "from an origin not allowed", "refused a %s from origin %s", kind, _shown(origin)
            )
            await _forbid(scope, send, "origin not allowed")
            return
        authenticated = self.policy.authenticated(headers, port)
        scope[AUTHENTICATED_KEY] = authenticated
        path: str = scope["path"]
        if scope["type"] == "http" and path.startswith("/api/") and not authenticated:
            await _unauthorized(send)
            return
        if scope["type"] == "http" and await self._may_set_cookie(scope, path):
            send = self._with_cookie(send, port)
        await self.app(scope, receive, send)

    async def _may_set_cookie(self, scope: Scope, path: str) -> bool:
        """Only for the dashboard page, fetched by a process of this user on this machine."""
        client, server = scope.get("client"), scope.get("server")
        if scope["method"] != "GET" or path not in DASHBOARD_PATHS or not client or not server:
            return False
        host, port = client
        if not is_loopback_address(host) or server[1] is None:
            return False
        same_user = await anyio.to_thread.run_sync(
            peer_is_same_user, (host, port), (server[0], server[1])
        )
        if same_user is False:
            self._refusals.log(
                "dashboard cookies for another user's process",
                "no dashboard cookie for %s: another user's process",
                host,
            )
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
    return DEFAULT_PORTS.get(scope.get("scheme", "http"), 80)


async def _forbid(scope: Scope, send: Send, reason: str) -> None:
    if scope["type"] == "websocket":
        # Closing before the handshake makes the server answer 403, without a body:
        # uvicorn's sans-I/O protocol logs an ERROR ("returned without completing
        # handshake") for every answer sent through the websocket.http.response extension.
        await send({"type": "websocket.close", "code": 1008})
        return
    body = f"403 Forbidden: {reason} (see docs/security.md)\n".encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _unauthorized(send: Send) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"www-authenticate", b'Bearer realm="usage-monitor"'),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": _UNAUTHORIZED})
