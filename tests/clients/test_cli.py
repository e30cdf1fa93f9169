"""The usage-monitor command: client commands run as a process against the real relay."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest
from pydantic import TypeAdapter

from clients import RelayClient, SnapshotReceived, SourcesReceived
from clients.cli import main
from clients.format import reset_label
from clients.rules import AlertRulesClient
from common.history import HistoryPoint
from common.messages import SourcesResult
from common.models import Snapshot, SourceInfo
from common.settings import ENV_PREFIX
from common.tokens import CLIENT_TOKEN_ENV, read_client_token
from simulator import Failure, GatewaySimulator
from tests.conftest import RelayHarness
from tests.relay.process import RelayProcess

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


@pytest.fixture(scope="module")
def demo_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRelay]:
    """One ``python -m relay --demo`` (several sources) for the module, every source polled."""
    home = tmp_path_factory.mktemp("demo-home")
    token_file = home / "client-token"
    env = {name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        USAGE_MONITOR_DATABASE=str(home / "demo.db"),
        **{CLIENT_TOKEN_ENV: str(token_file)},
    )
    process = RelayProcess.start(["--demo", "--demo-days", "2", "--port", "0"], env)
    try:
        relay = DemoRelay(process.ws_url, token_file)
        anyio.run(relay.wait_until_polled)
        yield relay
    finally:
        process.kill()


class DemoRelay:
    """Where the demo relay listens, its token, and its sources once each has been polled."""

    def __init__(self, ws_url: str, token_file: Path) -> None:
        self.ws_url = ws_url
        self.env = {CLIENT_TOKEN_ENV: str(token_file)}
        self._token_file = token_file
        self.sources: list[SourceInfo] = []

    def client(self) -> RelayClient:
        return RelayClient(self.ws_url, token_file=self._token_file)

    async def wait_until_polled(self) -> None:
        with anyio.fail_after(TIMEOUT):
            async with (
                self.client() as client,
                aclosing(client.events(every_source=True)) as events,
            ):
                listed: set[str] | None = None
                polled: set[str] = set()
                async for event in events:
                    if isinstance(event, SourcesReceived):
                        listed = set(event.sources.names)
                    elif isinstance(event, SnapshotReceived):
                        polled.add(event.snapshot.source)
                    if listed is not None and listed <= polled:
                        break
                self.sources = list((await client.list_sources()).sources)

    async def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return await run_cli(*args, "--url", self.ws_url, env={**self.env, **(env or {})})


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


# -- several sources: one demo relay for the module ------------------------------------


@pytest.mark.anyio
async def test_latest_prints_one_line_per_source(demo_relay: DemoRelay) -> None:
    """Without ``--source``, ``latest`` prints a line per source, names padded to the longest."""
    with anyio.fail_after(TIMEOUT):
        result = await demo_relay.cli("latest")
    assert result.returncode == 0, result.stderr
    width = max(len(source.name) for source in demo_relay.sources)
    lines = result.stdout.splitlines()
    assert len(lines) == len(demo_relay.sources)
    for line, source in zip(lines, demo_relay.sources, strict=True):
        assert source.latest is not None
        assert line.startswith(f"{source.name.ljust(width)}  {source.latest.meters[0].label} ")
    assert " · resets " in lines[0]


@pytest.mark.anyio
async def test_latest_json_prints_every_source(demo_relay: DemoRelay) -> None:
    """``latest --json`` prints the list of sources, each with its status and snapshot."""
    with anyio.fail_after(TIMEOUT):
        result = await demo_relay.cli("latest", "--json")
    assert result.returncode == 0, result.stderr
    sources = TypeAdapter(list[SourceInfo]).validate_json(result.stdout)
    assert [source.name for source in sources] == [source.name for source in demo_relay.sources]
    assert all(source.latest is not None for source in sources)


@pytest.mark.anyio
async def test_latest_of_one_source_prints_its_status_line(demo_relay: DemoRelay) -> None:
    """``latest --source NAME`` prints that source's line alone, without its name."""
    last = demo_relay.sources[-1]
    assert last.latest is not None
    first_meter = last.latest.meters[0]
    with anyio.fail_after(TIMEOUT):
        result = await demo_relay.cli("latest", "--source", last.name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith(f"{first_meter.label} ")


@pytest.mark.anyio
@pytest.mark.parametrize("command", ["latest", "watch"])
async def test_an_unknown_source_is_one_line_and_exit_2(
    demo_relay: DemoRelay, command: str
) -> None:
    """A source the relay does not serve is named on one line with the ones it does, exit 2."""
    with anyio.fail_after(TIMEOUT):
        result = await demo_relay.cli(command, "--source", "nope")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1 and "'nope'" in result.stderr
    assert ", ".join(source.name for source in demo_relay.sources) in result.stderr


@pytest.mark.anyio
async def test_sources_lists_name_kind_state_and_usage(demo_relay: DemoRelay) -> None:
    """``sources`` prints a row per source: its name, kind, state, last poll and usage."""
    with anyio.fail_after(TIMEOUT):
        result = await demo_relay.cli("sources")
    assert result.returncode == 0, result.stderr
    for source in demo_relay.sources:
        assert source.latest is not None
        # Which meter binds may change as the demo spends: any of the source's may show.
        meters = "|".join(re.escape(meter.label) for meter in source.latest.meters)
        row = rf"^{source.name} +{source.kind} +ok +(just now|\d+ (s|min|h) ago) +({meters}) "
        assert re.search(row, result.stdout, re.MULTILINE), result.stdout


@pytest.mark.anyio
async def test_sources_json_prints_the_relays_answer(demo_relay: DemoRelay) -> None:
    """``sources --json`` prints what ``list_sources`` answers: the sources, zone and default."""
    with anyio.fail_after(TIMEOUT):
        result = await demo_relay.cli("sources", "--json")
    assert result.returncode == 0, result.stderr
    listing = SourcesResult.model_validate_json(result.stdout)
    assert [source.name for source in listing.sources] == [s.name for s in demo_relay.sources]
    assert listing.default_source == demo_relay.sources[0].name


@pytest.mark.anyio
async def test_history_of_a_source_draws_its_meters(demo_relay: DemoRelay) -> None:
    """``history --source NAME`` has a column and a sparkline per meter of that source."""
    last = demo_relay.sources[-1]
    assert last.latest is not None
    with anyio.fail_after(TIMEOUT):
        result = await demo_relay.cli("history", "--source", last.name)
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    for meter in last.latest.meters:
        assert meter.label in header
        assert any(line.startswith(meter.label) for line in result.stdout.splitlines()[1:])


# -- the zone reset times are shown in ------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("config", "flags", "zone"),
    [
        ("", [], "America/New_York"),
        ('timezone = "Europe/London"\n', [], "Europe/London"),
        ('timezone = "Europe/London"\n', ["--timezone", "Asia/Tokyo"], "Asia/Tokyo"),
    ],
    ids=["machine zone", "config file", "flag"],
)
async def test_reset_dates_are_shown_in_the_configured_zone(
    simulator: GatewaySimulator,
    relay: RelayHarness,
    tmp_path: Path,
    config: str,
    flags: list[str],
    zone: str,
) -> None:
    """A reset beyond a day reads in the flag's zone, else the config's, else the machine's."""
    config_file = tmp_path / "config.toml"
    config_file.write_text(config, encoding="utf-8")
    simulator.set_usage(burst_percent=10.0, sustained_percent=80.0)
    with anyio.fail_after(TIMEOUT):
        snapshot = await refreshed(relay)
        result = await run_cli(
            "latest",
            "--url",
            relay.ws_url,
            "--config",
            str(config_file),
            *flags,
            env={"TZ": "America/New_York"},
        )
    assert result.returncode == 0, result.stderr
    monthly = snapshot.meter("sustained")
    assert monthly is not None and monthly.reset_at is not None
    expected = reset_label(monthly.reset_at, datetime.now(UTC), ZoneInfo(zone))
    assert result.stdout.rstrip("\n").endswith(expected[0].lower() + expected[1:])


@pytest.mark.anyio
async def test_an_unknown_timezone_is_one_line_and_exit_2() -> None:
    """A zone that is not an IANA name is refused on one line, before reaching the relay."""
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("latest", "--url", closed_port_url(), "--timezone", "Mars/Base")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1 and "Mars/Base" in result.stderr


# -- alerts ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_alerts_add_prints_the_new_rules_id(relay: RelayHarness) -> None:
    """``alerts add`` creates the rule on the relay and prints its id alone."""
    with anyio.fail_after(TIMEOUT):
        result = await run_cli(
            "alerts", "add", "--threshold", "80", "--meter", "burst", "--url", relay.ws_url
        )
        rules = await AlertRulesClient(relay.ws_url).list()
    assert result.returncode == 0, result.stderr
    assert [(r["id"], r["threshold_percent"], r["meter"]) for r in rules] == [
        (result.stdout.strip(), 80.0, "burst")
    ]


@pytest.mark.anyio
async def test_alerts_list_prints_a_table(relay: RelayHarness) -> None:
    """``alerts list`` prints a row per rule: id, threshold, source, meter, redacted webhook."""
    hook = "https://hooks.slack.com/services/T0/B0/s3cret"
    with anyio.fail_after(TIMEOUT):
        rule = await AlertRulesClient(relay.ws_url).add(95, source="default", webhook_url=hook)
        result = await run_cli("alerts", "list", "--url", relay.ws_url, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    [row] = [line.split() for line in result.stdout.splitlines() if rule["id"] in line]
    assert row[:5] == [rule["id"], "95%", "default", "any", "https://hooks.slack.com/…"]
    assert "s3cret" not in result.stdout


@pytest.mark.anyio
async def test_alerts_list_json_prints_the_api_object(relay: RelayHarness) -> None:
    """``alerts list --json`` prints ``{"rules": [...]}`` as the relay answers it."""
    with anyio.fail_after(TIMEOUT):
        rule = await AlertRulesClient(relay.ws_url).add(50)
        result = await run_cli("alerts", "list", "--json", "--url", relay.ws_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"rules": [rule]}


@pytest.mark.anyio
async def test_alerts_remove_deletes_the_rule(relay: RelayHarness) -> None:
    """``alerts remove ID`` deletes the rule and exits 0."""
    rules = AlertRulesClient(relay.ws_url)
    with anyio.fail_after(TIMEOUT):
        rule = await rules.add(50)
        result = await run_cli("alerts", "remove", rule["id"], "--url", relay.ws_url)
        left = await rules.list()
    assert (result.returncode, left) == (0, []), result.stderr


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["add", "--threshold", "150"], "threshold_percent"),
        (["add", "--threshold", "50", "--source", "nope"], "'nope'"),
        (["remove", "no-such-id"], "'no-such-id'"),
    ],
)
async def test_a_refused_alerts_command_is_one_line_and_exit_2(
    relay: RelayHarness, args: list[str], named: str
) -> None:
    """What the relay refuses is said on one line of stderr, naming the culprit, exit 2."""
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("alerts", *args, "--url", relay.ws_url)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1 and named in result.stderr


@pytest.mark.anyio
async def test_alerts_without_a_relay_exits_2() -> None:
    """When no relay listens ``alerts list`` says it cannot reach it and exits 2."""
    url = closed_port_url()
    with anyio.fail_after(TIMEOUT):
        result = await run_cli("alerts", "list", "--url", url)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1 and f"cannot reach the relay at {url}" in result.stderr


@pytest.mark.anyio
async def test_breakdown_prints_a_table_with_totals(demo_relay: DemoRelay) -> None:
    """``breakdown --group-by source,day`` prints a row per source and day, and a total."""
    with anyio.fail_after(TIMEOUT):
        result = await demo_relay.cli("breakdown", "--since", "2d", "--group-by", "source,day")
    assert result.returncode == 0, result.stderr
    assert "Total" in result.stdout
    assert all(source.name in result.stdout for source in demo_relay.sources)


@pytest.mark.anyio
async def test_breakdown_csv_holds_the_rows_of_the_json(demo_relay: DemoRelay) -> None:
    """The CSV, parsed back, holds the numbers of ``--json`` row for row."""
    query = ("breakdown", "--since", "2d", "--until", "1h", "--group-by", "source,day")
    with anyio.fail_after(TIMEOUT):
        as_json = await demo_relay.cli(*query, "--json")
        as_csv = await demo_relay.cli(*query, "--csv")
    assert as_json.returncode == 0 and as_csv.returncode == 0, as_json.stderr + as_csv.stderr
    rows = json.loads(as_json.stdout)["breakdown"]
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert rows, "the demo seeded no history"
    assert [
        (r["source"], r["day"], r["consumed_usd"], r["consumed_percent"], r["polls"])
        for r in parsed
    ] == [
        (
            r["source"],
            r["day"],
            "" if r["consumed"]["usd"] is None else str(r["consumed"]["usd"]),
            "" if r["consumed"]["percent"] is None else str(r["consumed"]["percent"]),
            str(r["polls"]),
        )
        for r in rows
    ]


@pytest.mark.anyio
async def test_breakdown_refuses_an_unknown_group(demo_relay: DemoRelay) -> None:
    """An unknown ``--group-by`` is the relay's one line naming it, exit 2."""
    with anyio.fail_after(TIMEOUT):
        result = await demo_relay.cli("breakdown", "--group-by", "week")
    assert result.returncode == 2
    assert "group_by" in result.stderr and result.stderr.count("\n") == 1
