"""``python -m relay`` (what ``usage-monitor serve`` runs): flags, environment and config file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import relay.__main__ as relay_main
from relay.__main__ import main
from relay.settings import Settings


@pytest.fixture
def serve_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Settings]:
    """A clean environment for ``serve``; returns the settings ``run`` was called with."""
    for name in list(os.environ):
        if name.startswith("USAGE_MONITOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    calls: list[Settings] = []
    monkeypatch.setattr(relay_main, "run", calls.append)
    return calls


def test_serve_flags_beat_the_environment(
    serve_env: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flag overrides the environment variable for the same setting."""
    monkeypatch.setenv("USAGE_MONITOR_PORT", "9000")
    assert main(["--demo", "--port", "9100", "--region", "eu"]) == 0
    [settings] = serve_env
    assert (settings.port, settings.region, settings.demo) == (9100, "eu", True)


def test_serve_leaves_unset_flags_to_env_and_config(
    serve_env: list[Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Settings without a flag still come from the environment and the config file."""
    config = tmp_path / "relay.toml"
    config.write_text('interval = 12.5\nproduct = "signals"\n', encoding="utf-8")
    monkeypatch.setenv("USAGE_MONITOR_GATEWAY_TOKEN", "secret")
    monkeypatch.setenv("USAGE_MONITOR_PORT", "9000")
    assert main(["--config", str(config), "--host", "127.0.0.2"]) == 0
    [settings] = serve_env
    assert (settings.host, settings.port, settings.interval) == ("127.0.0.2", 9000, 12.5)
    assert settings.product == "signals"


def test_serve_reads_the_token_file_flag(serve_env: list[Settings], tmp_path: Path) -> None:
    """``--token-file`` names the file the token is read from."""
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n", encoding="utf-8")
    assert main(["--token-file", str(token_file)]) == 0
    assert serve_env[0].token_provider()() == "from-file"


def test_serve_without_a_token_exits_2(
    serve_env: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a token (and not in demo mode) ``serve`` explains and does not start."""
    assert main([]) == 2
    assert "no gateway token" in capsys.readouterr().err
    assert serve_env == []


def test_serve_takes_no_token_value(serve_env: list[Settings]) -> None:
    """The token itself is never a flag, so it never shows in the process list."""
    with pytest.raises(SystemExit) as exit_:
        main(["--token", "secret"])
    assert exit_.value.code == 2


def test_serve_database_flag(serve_env: list[Settings], tmp_path: Path) -> None:
    """``--database`` names the SQLite file of stored snapshots."""
    database = tmp_path / "elsewhere.db"
    assert main(["--demo", "--database", str(database)]) == 0
    assert serve_env[0].database_path() == database


@pytest.mark.parametrize(
    ("line", "setting"),
    [
        ('allowed_origins = ["*"]', "allowed_origins"),
        ("history_detail_days = 1e300", "history_detail_days"),
        ("interval = inf", "interval"),
        ("interval = nan", "interval"),
        ("thresholds = [50, 120]", "thresholds"),
    ],
)
def test_a_setting_out_of_bounds_is_one_line_naming_it(
    serve_env: list[Settings],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    line: str,
    setting: str,
) -> None:
    """A value that would overflow or make no sense stops the start with one line, exit 2."""
    config = tmp_path / "relay.toml"
    config.write_text(line + "\n", encoding="utf-8")
    assert main(["--demo", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and setting in err
    assert serve_env == []


ROUTER = '[[sources]]\nname = "router"\nkind = "openrouter"\ntoken_env = "ROUTER_KEY"\n'


@pytest.mark.parametrize(
    ("entries", "named"),
    [
        (ROUTER.replace("openrouter", "bedrock"), ["entry 1 ('router')", "kind"]),
        (ROUTER + ROUTER, ["entry 2", "'router' is used twice"]),
        (ROUTER.replace('"router"', '"Router!"'), ["entry 1 ('Router!')", "name"]),
        (ROUTER.replace('token_env = "ROUTER_KEY"\n', ""), ["entry 1 ('router')", "token_env"]),
        (ROUTER + 'url = "openrouter.ai"\n', ["entry 1 ('router')", "url"]),
        (ROUTER.replace("openrouter", "litellm"), ["entry 1 ('router')", "needs a url"]),
        (ROUTER + 'region = "eu"\n', ["entry 1 ('router')", "region"]),
        (ROUTER + "colour = 3\n", ["entry 1 ('router')", "colour"]),
        ('default_source = "nowhere"\n' + ROUTER, ["default_source"]),
    ],
    ids=["kind", "duplicate", "name", "token", "scheme", "url", "region", "unknown", "default"],
)
def test_a_bad_sources_entry_is_one_line_naming_the_entry_and_key(
    serve_env: list[Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    entries: str,
    named: list[str],
) -> None:
    """A ``[[sources]]`` entry ``serve`` cannot use stops it with one line naming it, exit 2."""
    monkeypatch.setenv("ROUTER_KEY", "secret-key")
    config = tmp_path / "relay.toml"
    config.write_text(entries, encoding="utf-8")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert all(part in err for part in named), err
    assert "Traceback" not in err and "secret-key" not in err
    assert serve_env == []


def test_a_source_whose_token_is_missing_at_start_exits_2(
    serve_env: list[Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source whose token variable is unset stops ``serve``, naming the source."""
    config = tmp_path / "relay.toml"
    config.write_text(ROUTER, encoding="utf-8")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "'router'" in err and "ROUTER_KEY" in err


def test_sources_and_the_timezone_come_from_the_config_file(
    serve_env: list[Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[[sources]]``, ``default_source`` and ``timezone`` are read from the config file."""
    monkeypatch.setenv("ROUTER_KEY", "secret-key")
    token_file = tmp_path / "team-key"
    token_file.write_text("team-secret\n", encoding="utf-8")
    config = tmp_path / "relay.toml"
    config.write_text(
        'timezone = "Europe/London"\ndefault_source = "team"\n'
        + ROUTER
        + f'[[sources]]\nname = "team"\nkind = "litellm"\nurl = "http://127.0.0.1:4000"\n'
        f'token_file = "{token_file}"\ninterval = 5\n',
        encoding="utf-8",
    )
    assert main(["--config", str(config)]) == 0
    [settings] = serve_env
    router, team = settings.source_configs()
    assert (router.base_url, router.token(), router.interval) == (
        "https://openrouter.ai",
        "secret-key",
        30.0,
    )
    assert (team.kind, team.token(), team.interval) == ("litellm", "team-secret", 5.0)
    assert (settings.timezone, settings.default_source_name()) == ("Europe/London", "team")


def test_an_unknown_timezone_is_refused(
    serve_env: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--timezone`` must be an IANA zone name."""
    assert main(["--demo", "--timezone", "Mars/Olympus"]) == 2
    assert "timezone" in capsys.readouterr().err


def test_a_report_token_variable_unset_at_start_exits_2(
    serve_env: list[Settings], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """report_token_env naming an unset variable stops ``serve``, naming the setting."""
    monkeypatch.setenv("USAGE_MONITOR_GATEWAY_TOKEN", "secret")
    monkeypatch.setenv("USAGE_MONITOR_REPORT_URL", "https://billing.example/reports")
    monkeypatch.setenv("USAGE_MONITOR_REPORT_TOKEN_ENV", "BILLING_TOKEN")
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "report_token_env" in err and "BILLING_TOKEN" in err
    assert serve_env == []


def test_a_report_url_that_is_not_http_is_refused_without_quoting_it(
    serve_env: list[Settings], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A report_url without an http(s) scheme: exit 2 naming the setting, never the URL."""
    monkeypatch.setenv("USAGE_MONITOR_REPORT_URL", "ftp://billing.example/s3cr3t")
    assert main(["--demo"]) == 2
    err = capsys.readouterr().err
    assert "report_url" in err and "s3cr3t" not in err
