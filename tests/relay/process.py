"""A real relay process for the tests: ``python -m relay``, what ``usage-monitor serve`` runs."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.tokens import CLIENT_TOKEN_ENV

from .wire import auth_headers

__all__ = ["RelayProcess", "relay_environment"]

#: Only a guard against hanging: on two busy cores a relay may take seconds to start.
START_DEADLINE = 60.0

_LISTENING = re.compile(r"relay listening on (ws://\S+)")


class RelayProcess:
    """A relay in a child process; its stderr is read the whole time into ``log``.

    Reading all along matters: a relay that logs a lot must never block on a
    full pipe. ``start`` returns once the relay said where it listens.
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.ws_url = ""
        #: Every line the relay wrote to stderr.
        self.log: list[str] = []
        #: How many of them came before it said it was listening.
        self.startup_lines = 0
        self._listening: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        preexec_fn: Callable[[], Any] | None = None,
    ) -> RelayProcess:
        """Start ``python -m relay ARGS``; blocks until it listens (call it from a thread in
        a test whose own event loop must go on serving meanwhile)."""
        process = subprocess.Popen(
            [sys.executable, "-m", "relay", *args],
            env=dict(env),
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
        )
        relay = cls(process)
        ws_url = relay._listening.get(timeout=START_DEADLINE)
        if ws_url is None:
            log = "".join(relay.log)
            raise AssertionError(f"the relay exited with {process.wait()}:\n{log}")
        relay.ws_url = ws_url
        return relay

    @property
    def url(self) -> str:
        return "http" + self.ws_url.removeprefix("ws").removesuffix("/ws")

    @property
    def lines_since_start(self) -> list[str]:
        """What the relay wrote after it said it was listening."""
        return self.log[self.startup_lines :]

    def peak_rss(self) -> int:
        """The most resident memory the process has used so far, in bytes (VmHWM)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
        assert match is not None, status
        return int(match.group(1)) * 1024

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, headers=auth_headers()) as client:
            return await client.get(path)

    async def status(self) -> dict[str, Any]:
        """The monitor's status as ``/healthz`` tells an authenticated client."""
        response = await self.get("/healthz")
        assert response.status_code == 200
        status: dict[str, Any] = response.json()["status"]
        return status

    def stop(self) -> int:
        """SIGTERM, and the exit code once the relay has shut down."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL, then wait for the process and for the last of its stderr."""
        self.process.kill()
        self.process.wait()
        self._reader.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            if not self.startup_lines and (match := _LISTENING.search(line)):
                self.startup_lines = len(self.log)
                self._listening.put(match.group(1))
        self._listening.put(None)


def relay_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: str
) -> dict[str, str]:
    """The environment of a relay process with its own database and client token file,
    which this process's clients find too (``settings`` become USAGE_MONITOR_* variables)."""
    monkeypatch.setenv(CLIENT_TOKEN_ENV, str(tmp_path / "client-token"))
    variables = {f"USAGE_MONITOR_{name.upper()}": value for name, value in settings.items()}
    return {**os.environ, "USAGE_MONITOR_DATABASE": str(tmp_path / "usage.db"), **variables}
