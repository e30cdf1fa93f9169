"""The relay as its lifespan wires it: the gateway, the store and the monitor together."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import httpx
import pytest

from common.exceptions import ClientTokenError
from relay.server import RelayServer
from relay.settings import Settings
from simulator import GatewaySimulator

from .wire import auth_headers

pytestmark = pytest.mark.anyio


async def test_a_vanished_gateway_token_file_is_an_auth_error_not_a_crash(
    relay_settings: Settings,
    simulator: GatewaySimulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the token file gone, polls end in auth_error naming the file, with no traceback."""
    token_file = tmp_path / "gateway-token"
    settings = relay_settings.model_copy(
        update={"gateway_token": None, "gateway_token_file": token_file}
    )
    with anyio.fail_after(10):
        async with (
            RelayServer(settings) as server,
            httpx.AsyncClient(base_url=server.url, headers=auth_headers()) as client,
        ):
            response = await client.post("/api/v1/usage/refresh")
            status = server.hub.monitor.status
    assert response.status_code == 503
    assert status.state == "auth_error"
    assert status.last_error == (
        f"cannot read the gateway token file {token_file}: No such file or directory"
    )
    assert simulator.requests_served == 0
    assert not [record for record in caplog.records if record.exc_info]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_relay_with_an_unsafe_token_file_does_not_start(
    relay_settings: Settings, tmp_path: Path
) -> None:
    """Building the app fails with ClientTokenError rather than serve with a leaked token."""
    path = tmp_path / "shared-token"
    path.write_text("x" * 43)
    path.chmod(0o644)
    with pytest.raises(ClientTokenError):
        RelayServer(relay_settings.model_copy(update={"client_token_file": path}))
