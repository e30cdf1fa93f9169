"""The client token file: created private, read back, refused when others could read or swap it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from common.exceptions import ClientTokenError
from common.tokens import (
    CLIENT_TOKEN_ENV,
    default_client_token_path,
    load_or_create_client_token,
    read_client_token,
)


def test_token_is_created_private_on_first_start(tmp_path: Path) -> None:
    """The first start writes a 256-bit url-safe token, mode 0600, in a 0700 directory."""
    path = tmp_path / "config" / "client-token"
    token = load_or_create_client_token(path)
    assert len(token) == 43
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["client-token"]


def test_token_survives_restarts(tmp_path: Path) -> None:
    """Later starts read the same token back."""
    path = tmp_path / "client-token"
    assert load_or_create_client_token(path) == load_or_create_client_token(path)


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    """A token that other users could have read is not used."""
    path = tmp_path / "client-token"
    load_or_create_client_token(path)
    path.chmod(0o644)
    with pytest.raises(ClientTokenError, match="other users"):
        load_or_create_client_token(path)


def test_a_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    """The relay does not follow a symlink in place of its token file."""
    target = tmp_path / "elsewhere"
    load_or_create_client_token(target)
    (tmp_path / "client-token").symlink_to(target)
    with pytest.raises(ClientTokenError):
        load_or_create_client_token(tmp_path / "client-token")


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    """A file without a token says to delete it."""
    path = tmp_path / "client-token"
    path.touch(mode=0o600)
    with pytest.raises(ClientTokenError, match="delete it"):
        load_or_create_client_token(path)


def test_clients_read_the_token_from_the_env_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_client_token() follows USAGE_MONITOR_CLIENT_TOKEN_FILE, None if absent."""
    path = tmp_path / "client-token"
    monkeypatch.setenv(CLIENT_TOKEN_ENV, str(path))
    assert read_client_token() is None
    token = load_or_create_client_token(path)
    assert read_client_token() == token


def test_the_default_token_path_is_in_the_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without USAGE_MONITOR_CLIENT_TOKEN_FILE the token is client-token under XDG_CONFIG_HOME."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_client_token_path() == tmp_path / "usage-monitor" / "client-token"


@pytest.mark.parametrize("strict", [True, False], ids=["relay", "client"])
def test_a_directory_in_place_of_the_token_file_is_a_clear_error(
    tmp_path: Path, strict: bool
) -> None:
    """A directory where the token file should be is a ClientTokenError, not an OSError."""
    path = tmp_path / "client-token"
    path.mkdir()
    with pytest.raises(ClientTokenError, match="is not a file"):
        if strict:
            load_or_create_client_token(path)
        else:
            read_client_token(path)
