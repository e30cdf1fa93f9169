"""The usage-monitor command: client commands run as a process against the real relay."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from pydantic import TypeAdapter

from clients import RelayClient
from clients.cli import main
from common.history import HistoryPoint
from common.models import Snapshot
from common.tokens import CLIENT_TOKEN_ENV, read_client_token
from simulator import Failure, GatewaySimulator
from tests.conftest import RelayHarness

TIMEOUT = 20  # each command is a new Python process that imports pydantic and rich


async def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = await anyio.run_process(
        [sys.executable, "-m", "clients.cli", *args],
        check=False,
        env={**os.environ, **(env or {})},
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def closed_port_url() -> str:
    """A relay URL on a loopback port that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"ws://127.0.0.1:{port}/ws"


async def refreshed(relay: RelayHarness) -> Snapshot:
    async with RelayClient(relay.ws_url) as client:
        return await client.refresh()


@pytest.fixture
def held_gateway(simulator: GatewaySimulator) -> Iterator[GatewaySimulator]:
    """A gateway that answers no poll until the test ends; ask for it before ``relay``."""
    simulator.hold()
    yield simulator
    simulator.release()


@pytest.mark.anyio
async def test_latest_prints_one_status_line(
    simulator: GatewaySimulator, relay: RelayHarness
) -> None:
    """``latest`` prints the status-bar line of the relay's snapshot and exits 0."""
    simulator.set_usage(burst_percent=37.0, sustained_percent=12.0)
    with anyio.fail_after(TIMEOUT):
        await refreshed(relay)
        result = await run_cli("latest", "--url", relay.ws_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Daily 37% · Monthly 12% · resets ")
    assert result.stdout.count("\n") == 1


@pytest.mark.anyio
async def test_latest_json_prints_the_snapshot(relay: RelayHarness) -> None:
    """``latest --json`` prints the snapshot as JSON."""
    with anyio.fail_after(TIMEOUT):
        snapshot = await refreshed(relay)
        result = await run_cli("latest", "--json", "--url", relay.ws_url)
    assert result.returncode == 0, result.stderr
    assert Snapshot.model_validate_json(result.stdout) == snapshot


@pytest.mark.anyio
async def test_latest_without_a_snapshot_exits_1(
    held_gateway: GatewaySimulator, relay: RelayHarness
) -> None:
    """Before the first successful poll ``latest`` says so on stderr and exits 1."""
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("latest", "--url", relay.ws_url)
    assert (result.returncode, result.stdout) == (1, "")
    assert "no usage yet" in result.stderr


@pytest.mark.anyio
async def test_latest_without_a_relay_exits_2() -> None:
    """When no relay listens ``latest`` says it cannot reach it and exits 2."""
    url = closed_port_url()
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("latest", "--url", url)
    assert (result.returncode, result.stdout) == (2, "")
    assert f"cannot reach the relay at {url}" in result.stderr


@pytest.mark.anyio
async def test_url_comes_from_the_environment() -> None:
    """Without ``--url`` the client commands use USAGE_MONITOR_URL."""
    url = closed_port_url()
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("latest", env={"USAGE_MONITOR_URL": url})
    assert result.returncode == 2
    assert url in result.stderr


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["flag", "environment", "config file", "config variable"])
async def test_client_commands_find_the_relay_where_serve_listens(
    relay: RelayHarness, tmp_path: Path, where: str
) -> None:
    """The port given to ``serve`` by flag, variable or config file is found by ``latest`` too."""
    port = str(relay.server.port)
    config = tmp_path / "config.toml"
    config.write_text(f"port = {port}\n", encoding="utf-8")
    args, env = {
        "flag": (["--port", port], {}),
        "environment": ([], {"USAGE_MONITOR_PORT": port}),
        "config file": (["--config", str(config)], {}),
        "config variable": ([], {"USAGE_MONITOR_CONFIG": str(config)}),
    }[where]
    with anyio.fail_after(TIMEOUT):
        await refreshed(relay)
        result = await run_cli("latest", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Daily ")


@pytest.mark.anyio
async def test_client_commands_read_the_token_file_the_config_names(
    relay: RelayHarness, tmp_path: Path
) -> None:
    """``client_token_file`` in the config file is where the client commands find the token."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'port = {relay.server.port}\nclient_token_file = "{relay.settings.client_token_file}"\n',
        encoding="utf-8",
    )
    env = {name: value for name, value in os.environ.items() if name != CLIENT_TOKEN_ENV}
    with anyio.fail_after(TIMEOUT):
        result = await anyio.run_process(
            [sys.executable, "-m", "clients.cli", "token", "--config", str(config)],
            check=False,
            env=env,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == read_client_token(relay.settings.client_token_file)


@pytest.mark.anyio
async def test_the_url_flag_beats_host_and_port(relay: RelayHarness) -> None:
    """``--url`` names the relay even when a port says otherwise."""
    with anyio.fail_after(TIMEOUT):
        await refreshed(relay)
        result = await run_cli("latest", "--url", relay.ws_url, "--port", "1")
    assert result.returncode == 0, result.stderr


@pytest.mark.anyio
async def test_an_invalid_config_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A config file that does not parse is named on one line, exit code 2, no traceback."""
    config = tmp_path / "config.toml"
    config.write_text("port = [unclosed\n", encoding="utf-8")
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("latest", "--config", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr and "Traceback" not in result.stderr


@pytest.mark.anyio
async def test_refresh_prints_the_new_snapshot(relay: RelayHarness) -> None:
    """``refresh --json`` polls the gateway and prints a newer snapshot."""
    with anyio.fail_after(TIMEOUT):
        before = await refreshed(relay)
        result = await run_cli("refresh", "--json", "--url", relay.ws_url)
    assert result.returncode == 0, result.stderr
    assert Snapshot.model_validate_json(result.stdout).seq > before.seq


@pytest.mark.anyio
async def test_refresh_reports_upstream_unavailable(
    simulator: GatewaySimulator, relay: RelayHarness
) -> None:
    """A refresh the gateway fails is reported with the last good usage, exit 1."""
    with anyio.fail_after(TIMEOUT):
        await refreshed(relay)
        simulator.inject(Failure.SERVER_ERROR)
        result = await run_cli("refresh", "--url", relay.ws_url)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.count("the gateway could not be polled") == 1
    assert "last good usage: Daily " in result.stderr


@pytest.mark.anyio
async def test_history_prints_rows_and_sparklines(
    simulator: GatewaySimulator, relay: RelayHarness
) -> None:
    """``history`` prints a row per point and a sparkline per window."""
    with anyio.fail_after(TIMEOUT):
        for burst in (10.0, 20.0, 37.0):
            simulator.set_usage(burst_percent=burst, sustained_percent=12.0)
            await refreshed(relay)
        result = await run_cli("history", "--url", relay.ws_url)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    table = [row[1:] for row in rows if len(row) == 3 and row[2].endswith("%")]
    assert table[-3:] == [["10%", "12%"], ["20%", "12%"], ["37%", "12%"]]
    [daily] = [row[1] for row in rows if row[:1] == ["Daily"] and len(row) > 1]
    assert set(daily) <= set("▁▂▃▄▅▆▇█") and daily.endswith("▂▂▄")


@pytest.mark.anyio
async def test_history_json_prints_the_points(relay: RelayHarness) -> None:
    """``history --json`` prints the points as a JSON array, as the client gets them."""
    with anyio.fail_after(TIMEOUT):
        await refreshed(relay)
        result = await run_cli("history", "--json", "--url", relay.ws_url)
        async with RelayClient(relay.ws_url) as client:
            expected = await client.history()
    assert result.returncode == 0, result.stderr
    assert TypeAdapter(list[HistoryPoint]).validate_json(result.stdout) == expected


@pytest.mark.anyio
async def test_history_without_points_exits_1(
    held_gateway: GatewaySimulator, relay: RelayHarness
) -> None:
    """Before the first successful poll ``history`` says so on stderr and exits 1."""
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("history", "--url", relay.ws_url)
    assert (result.returncode, result.stdout) == (1, "")
    assert "no usage history" in result.stderr


@pytest.mark.anyio
async def test_history_without_a_relay_exits_2() -> None:
    """When no relay listens ``history`` says it cannot reach it and exits 2."""
    url = closed_port_url()
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("history", "--url", url)
    assert (result.returncode, result.stdout) == (2, "")
    assert f"cannot reach the relay at {url}" in result.stderr


@pytest.mark.parametrize("since", ["yesterday", "24", "-1h"])
def test_history_rejects_a_malformed_since(since: str) -> None:
    """``--since`` takes a duration like 24h or an ISO 8601 time, nothing else."""
    with pytest.raises(SystemExit) as exit_:
        main(["history", "--since", since])
    assert exit_.value.code == 2


@pytest.mark.anyio
async def test_serve_hands_over_to_the_relays_command_line() -> None:
    """``serve`` runs ``python -m relay``: its help is the relay's, with the relay's flags."""
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: usage-monitor serve")
    assert "--token-file" in result.stdout and "--demo" in result.stdout


@pytest.mark.anyio
async def test_serve_with_bad_settings_says_which_and_exits_2(tmp_path: Path) -> None:
    """A setting the relay cannot start with is named on one line, exit code 2."""
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("serve", "--demo", "--port", "70000")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "port" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.anyio
async def test_token_prints_the_relays_client_token(relay: RelayHarness) -> None:
    """`token` prints the token the relay created, for configuring other clients."""
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("token")
    assert result.returncode == 0
    assert result.stdout.strip() == read_client_token(relay.settings.client_token_file)


@pytest.mark.anyio
async def test_token_path_names_the_file_not_the_secret(relay: RelayHarness) -> None:
    """`token --path` prints where the token is kept, not the token."""
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("token", "--path")
    assert result.stdout.strip() == str(relay.settings.client_token_file)


@pytest.mark.anyio
async def test_token_before_any_relay_ran_exits_1(tmp_path: Path) -> None:
    """Without a token file yet, `token` says which command creates it and exits 1."""
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("token", env={CLIENT_TOKEN_ENV: str(tmp_path / "absent")})
    assert result.returncode == 1
    assert "usage-monitor serve" in result.stderr
