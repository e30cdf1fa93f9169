"""Tests of ``python -m simulator``, run as a process of its own."""

from __future__ import annotations

import signal
import sys

import anyio
import httpx
import pytest

from .conftest import LITELLM_PATH, OPENROUTER_PATH, USAGE_PATH


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


@pytest.mark.anyio
async def test_main_serves_every_dialect_as_configured() -> None:
    """The process answers OpenRouter and LiteLLM too, with the limits given on its command line."""
    command = [
        *(sys.executable, "-m", "simulator", "--port", "0", "--token", "t0k"),
        *("--openrouter-limit-usd", "none", "--litellm-budget-duration", "none"),
    ]
    with anyio.fail_after(10):
        async with await anyio.open_process(command) as process:
            assert process.stdout is not None
            output = b""
            while b"\n" not in output:
                output += await process.stdout.receive()
            url = output.decode().strip()
            async with httpx.AsyncClient(headers={"Authorization": "Bearer t0k"}) as client:
                key = (await client.get(url + OPENROUTER_PATH)).json()["data"]
                info = (await client.get(url + LITELLM_PATH)).json()["info"]
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert (key["limit"], key["limit_remaining"]) == (None, None)
    assert (info["budget_duration"], info["budget_reset_at"]) == (None, None)
