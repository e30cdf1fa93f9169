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
