"""Starting, pinning, watching and stopping the suite's child processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
from collections.abc import Callable
from pathlib import Path

__all__ = ["free_port", "log_tail", "pinned", "stop_process", "wait_for_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cpus: set[int] | None, open_files: int | None = None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``cpus`` (None: leave it alone), and limits
    its open files, soft and hard, to ``open_files`` (None: inherit the limit)."""
    if not cpus and open_files is None:
        return None

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    return pin


def log_tail(path: Path | None, lines: int = 5) -> str:
    """The last lines of a child's log, for error messages."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:])


async def wait_for_port(port: int, process: asyncio.subprocess.Process, within: float) -> None:
    """Until something accepts connections on ``port``; fails if ``process`` exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if process.returncode is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise TimeoutError(f"nothing listens on port {port} after {within} s") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def stop_process(process: asyncio.subprocess.Process, *, grace: float = 5.0) -> None:
    """SIGKILL: a measured server needs no graceful shutdown, and its sockets close at once."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace)
