"""
Where daily usage reports go: an HTTP endpoint (``report_url``) and a directory
(``report_dir``), each delivering one saved report at a time.

A delivery comes to an ``Outcome``: ``delivered``; ``pending``, to be retried
by itself (a 5xx answer, a timeout, a refused connection, a full or read-only
disk); or ``failed``, which waits for someone to act (any other 4xx answer:
the receiver refuses this report). The error names the destination and what
went wrong, never the URL, which may carry a secret.

``target`` tells two destinations of one kind apart: a report delivered to
one URL or directory still goes to the next one configured.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final, Protocol

import anyio
import anyio.to_thread
import httpx

from common.reports import DeliveryState, Destination, idempotency_key

from .exceptions import UpstreamAuthError
from .gateway import TokenProvider, parse_retry_after

__all__ = ["DirectoryDestination", "Outcome", "ReportDestination", "SavedReport", "UrlDestination"]

#: Statuses of a refusal that may pass by itself: request timeout, too early, too many.
_RETRY_STATUSES: Final = frozenset({408, 425, 429})
#: How much of a refusal's body the error quotes.
_EXCERPT_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class SavedReport:
    """A report as saved: the exact bytes every delivery of it sends."""

    source: str
    usage_day: date
    body: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one delivery went; ``retry_after`` is the receiver's own advice, in seconds."""

    state: DeliveryState
    error: str | None = None
    retry_after: float | None = None


class ReportDestination(Protocol):
    @property
    def name(self) -> Destination: ...

    @property
    def target(self) -> str:
        """What tells this destination from another of its kind."""
        ...

    async def deliver(self, report: SavedReport) -> Outcome: ...


class UrlDestination:
    """POSTs each report as JSON under its ``Idempotency-Key``; 2xx and 409 mean delivered.

    One deadline, ``timeout`` seconds, covers each whole request. ``token``,
    when given, is read before every request and sent as a bearer token; a
    token that cannot be read leaves the report pending.
    """

    name: Final = "report_url"

    def __init__(
        self,
        url: str,
        *,
        token: TokenProvider | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.target = hashlib.sha256(url.encode()).hexdigest()[:16]
        self._url = url
        self._timeout = timeout
        self._token = token
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            follow_redirects=False,
            headers={"Content-Type": "application/json", "User-Agent": "usage-monitor"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def deliver(self, report: SavedReport) -> Outcome:
        headers = {"Idempotency-Key": idempotency_key(report.source, report.usage_day)}
        try:
            if self._token is not None:
                headers["Authorization"] = f"Bearer {self._token()}"
            with anyio.fail_after(self._timeout):
                return await self._post(report.body.encode(), headers)
        except UpstreamAuthError as exc:
            return Outcome("pending", f"report_url: {exc}")
        except (TimeoutError, httpx.TimeoutException):
            return Outcome("pending", f"report_url: no answer within {self._timeout:g} s")
        except httpx.HTTPError as exc:
            return Outcome("pending", f"report_url: unreachable ({type(exc).__name__})")

    async def _post(self, body: bytes, headers: dict[str, str]) -> Outcome:
        async with self._client.stream(
            "POST", self._url, content=body, headers=headers
        ) as response:
            status = response.status_code
            if response.is_success or status == 409:
                return Outcome("delivered")
            error = f"report_url: HTTP {status}{await _excerpt(response)}"
            if status >= 500 or status in _RETRY_STATUSES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return Outcome("pending", error, retry_after)
            return Outcome("failed", error)


async def _excerpt(response: httpx.Response) -> str:
    """The start of a refusal's body on one line, which often says why (": unknown account")."""
    text = bytearray()
    async for chunk in response.aiter_bytes():
        text += chunk
        if len(text) >= _EXCERPT_CHARS:
            break
    shown = " ".join(text[:_EXCERPT_CHARS].decode(errors="replace").split())
    printable = "".join(char for char in shown if char.isprintable())
    return f": {printable}" if printable else ""


class DirectoryDestination:
    """Writes each report to ``<directory>/<source>/<usage_day>.json``, atomically: a
    temporary file, flushed to disk, renamed over the report's name."""

    name: Final = "report_dir"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.target = str(directory.absolute())

    def path_of(self, report: SavedReport) -> Path:
        return self.directory / report.source / f"{report.usage_day.isoformat()}.json"

    async def deliver(self, report: SavedReport) -> Outcome:
        path = self.path_of(report)
        try:
            await anyio.to_thread.run_sync(_write_atomically, path, report.body.encode())
        except OSError as exc:
            return Outcome("pending", f"report_dir: cannot write {path}: {exc.strerror or exc}")
        return Outcome("delivered")


def _write_atomically(path: Path, content: bytes) -> None:
    """Replace ``path`` with ``content`` so that a reader sees the old file or the whole new
    one, and the new one survives a crash once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("xb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)  # the rename itself
    finally:
        os.close(directory)
