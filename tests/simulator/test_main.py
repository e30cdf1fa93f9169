"""Tests of ``python -m simulator``, run as a process of its own."""

from __future__ import annotations

import signal
import sys

import anyio
import httpx
import pytest

from .conftest import USAGE_PATH


@pytest.mark.anyio
async def test_main_runs_standalone() -> None:
    """python -m simulator prints its URL, serves, and exits 0 on SIGTERM."""
    command = [sys.executable, "-m", "simulator", "--port", "0", "--token", "t0k"]
    with anyio.fail_after(10):
        async with await anyio.open_process(command) as process:
            assert process.stdout is not None
            output = b""
            while b"\n" not in output:
                output += await process.stdout.receive()
            url = output.decode().strip()
            assert url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(headers={"Authorization": "Bearer t0k"}) as client:
                assert (await client.get(url + USAGE_PATH)).status_code == 200
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
