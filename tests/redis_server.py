"""A real Redis for the tests: Debian's ``redis-server`` in a child process on a free loopback port.

It keeps nothing on disk (no snapshots, no append-only file), so a server killed and
started again comes back empty, as a Redis that lost its data does. The harness speaks
RESP over plain sockets itself: its own tests need no redis-py.

A test module takes the ``redis_server`` fixture by importing it::

    from tests.redis_server import RedisServer, redis_server_fixture  # noqa: F401
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import pytest

from tests.programs import require_program

__all__ = ["RedisServer", "find_redis_server", "redis_server_fixture"]

#: Only a guard against hanging: Redis starts in milliseconds, but on two busy cores
#: a test suite's worth of processes may delay it.
START_DEADLINE = 20.0
#: How long ``command`` waits to connect and for a reply before it gives up.
COMMAND_TIMEOUT = 10.0


def find_redis_server() -> str:
    """Return the path of the system's redis-server; fail under CI, skip elsewhere, when missing."""
    return require_program("redis-server", "Redis", "redis-server")


class RedisServer:
    """``redis-server`` without persistence on 127.0.0.1; its output goes to a log in ``workdir``.

    A file rather than a pipe: a server nobody reads from must never block on its output.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        #: Chosen by the first ``start`` unless given, and kept for restarts.
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL redis-py connects to: database 0 of this server."""
        if self.port is None:
            raise RuntimeError("the server has no port before start()")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """What the running (or last) server wrote to stdout and stderr."""
        return self.workdir / "redis-server.log"

    @property
    def alive(self) -> bool:
        """Whether the server process is running."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server; blocks until it answers PING."""
        if self.alive:
            raise RuntimeError("the server is already running")
        executable = find_redis_server()
        if self.port is None:
            self.port = _free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    executable,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--dir",
                    str(self.workdir),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "yes",
                    "--loglevel",
                    "warning",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_ready()

    def restart(self) -> None:
        """Start again on the same port, after ``kill`` or ``stop``."""
        if self.port is None:
            raise RuntimeError("restart() follows start()")
        self.start()

    def kill(self) -> None:
        """SIGKILL; the process is gone when this returns."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> int:
        """SIGTERM, and the exit code once the server has shut down."""
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout=10)

    def command(self, *args: str | bytes | int) -> bytes:
        """Send one command on a new connection and return its raw RESP reply."""
        if self.port is None:
            raise RuntimeError("the server has no port before start()")
        parts = [arg if isinstance(arg, bytes) else str(arg).encode() for arg in args]
        request = b"*%d\r\n" % len(parts) + b"".join(
            b"$%d\r\n%s\r\n" % (len(part), part) for part in parts
        )
        with socket.create_connection(("127.0.0.1", self.port), timeout=COMMAND_TIMEOUT) as sock:
            sock.sendall(request)
            with sock.makefile("rb") as reader:
                return _read_reply(reader)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.alive:
            self.kill()

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}:\n{self._log()}"
                )
            try:
                if self.command("PING") == b"+PONG\r\n":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server did not answer PING within {START_DEADLINE} s:\n{self._log()}"
                )
            time.sleep(0.01)

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(name="redis_server")
def redis_server_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    """A started Redis of the test's own, killed afterwards.

    Registered as ``redis_server`` under another function name, so that a test's parameter
    does not shadow the imported function (ruff's F811).
    """
    with RedisServer(tmp_path / "redis") as server:
        yield server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _read_reply(reader: BinaryIO) -> bytes:
    """One whole RESP2 reply: a line, and for a bulk string or an array what it announces."""
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError(f"Redis closed the connection mid-reply: {line!r}")
    kind, rest = line[:1], line[1:-2]
    if kind == b"$" and rest != b"-1":
        return line + reader.read(int(rest) + 2)
    if kind == b"*" and rest != b"-1":
        return line + b"".join(_read_reply(reader) for _ in range(int(rest)))
    return line
