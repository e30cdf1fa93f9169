"""
The client token file: the secret every client of the relay presents.

The relay creates it at its first start (``load_or_create_client_token``),
private to the user (0600 in a 0700 directory), and refuses to start on a
file that others could read or swap. Clients on the same machine read it by
themselves (``read_client_token``), so nothing has to be configured.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Final

from .exceptions import ClientTokenError
from .paths import config_dir

__all__ = [
    "CLIENT_TOKEN_ENV",
    "default_client_token_path",
    "load_or_create_client_token",
    "read_client_token",
]

logger = logging.getLogger("usage_monitor.tokens")

#: Names a path to the client token file, overriding the default.
CLIENT_TOKEN_ENV: Final = "USAGE_MONITOR_CLIENT_TOKEN_FILE"

_MAX_TOKEN_LENGTH: Final = 1024


def default_client_token_path() -> Path:
    """``$USAGE_MONITOR_CLIENT_TOKEN_FILE``, else ``client-token`` in the config directory."""
    override = os.environ.get(CLIENT_TOKEN_ENV)
    return Path(override) if override else config_dir() / "client-token"


def load_or_create_client_token(path: Path) -> str:
    """Return the token in ``path``, creating the file (0600) with a new token if missing.

    Creation is atomic: a concurrent start sees either no file or the whole token.
    """
    try:
        return _read_token_file(path, strict=True)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".client-token-")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(token + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)  # fails if another process created it meanwhile
        except FileExistsError:
            return _read_token_file(path, strict=True)
    finally:
        os.unlink(temporary)
    logger.info("created a client token in %s (readable only by you)", path)
    return token


def read_client_token(path: Path | None = None) -> str | None:
    """The client token for a client to send, or None if the relay never created one.

    ``path`` defaults to ``default_client_token_path()``. Raises
    ``ClientTokenError`` if the file exists but cannot be used.
    """
    try:
        return _read_token_file(path or default_client_token_path(), strict=False)
    except FileNotFoundError:
        return None


def _read_token_file(path: Path, *, strict: bool) -> str:
    """Read a token; with ``strict`` (the relay) refuse a file others could read or swap."""
    # The relay does not follow a symlink: someone else could point it elsewhere.
    flags = os.O_RDONLY | (getattr(os, "O_NOFOLLOW", 0) if strict else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ClientTokenError(f"cannot read the client token file {path}: {exc}") from None
    try:
        _check_token_file(path, os.fstat(fd), strict=strict)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, encoding="ascii", errors="replace") as file:
        token = file.read(_MAX_TOKEN_LENGTH + 1).strip()
    if not token or len(token) > _MAX_TOKEN_LENGTH or not token.isprintable() or " " in token:
        raise ClientTokenError(
            f"{path} does not hold a usable token; delete it and a new one is created"
        )
    return token


def _check_token_file(path: Path, info: os.stat_result, *, strict: bool) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ClientTokenError(f"{path} is not a file: it cannot hold the client token")
    if strict and os.name == "posix":
        if info.st_uid != os.geteuid():
            raise ClientTokenError(f"{path} is not a file of yours; remove it")
        if info.st_mode & 0o077:
            raise ClientTokenError(
                f"{path} can be read by other users, who may have copied the token: "
                "delete the file (a new token is created at the next start) "
                "or make it private with `chmod 600`"
            )
