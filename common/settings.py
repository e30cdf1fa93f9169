"""
One configuration for the relay and its clients.

Values come, highest priority first, from the values given (command-line
flags), environment variables (``USAGE_MONITOR_<NAME>``), the TOML config file
and the defaults. ``serve`` reads the relay's ``Settings`` (``relay.settings``),
a subclass of ``ConnectionSettings``; the client commands read
``ConnectionSettings`` from the same flags, variables and file, so they find a
relay moved to another port without being told twice.

The config file is a value (``load(config_file=...)``); without one,
``$USAGE_MONITOR_CONFIG`` or ``config.toml`` in the config directory is read.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from tomllib import TOMLDecodeError
from typing import Any, Final, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tzlocal
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .exceptions import ConfigError
from .hosts import WILDCARD_HOSTS
from .paths import CONFIG_ENV, default_config_file
from .tokens import default_client_token_path

__all__ = [
    "DEFAULT_PORT",
    "ENV_PREFIX",
    "LOCATION_FIELDS",
    "ConnectionSettings",
    "LayeredSettings",
    "describe_invalid",
    "given",
    "location_arguments",
    "machine_timezone",
]

DEFAULT_PORT: Final = 8765
ENV_PREFIX: Final = "USAGE_MONITOR_"
#: The settings that say where the relay listens, which clients need as well.
LOCATION_FIELDS: Final = ("host", "port")


class LayeredSettings(BaseSettings):
    """Settings built from the layers above by ``load()``; the constructor takes values only."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", allow_inf_nan=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The layers are merged by load(), so constructing settings reads nothing implicitly.
        return (init_settings,)

    @classmethod
    def load(cls, config_file: Path | None = None, **given: Any) -> Self:
        """Read the config file and the environment under ``given``; raise ``ConfigError``."""
        path = config_file or default_config_file()
        if (config_file is not None or CONFIG_ENV in os.environ) and not path.is_file():
            # A file the user named must exist; only the default one may be absent.
            raise ConfigError(f"config file not found: {path}")
        values: dict[str, Any] = {}
        try:
            values.update(TomlConfigSettingsSource(cls, toml_file=path)())
        except (OSError, TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the config file {path}: {exc}") from None
        try:
            values.update(EnvSettingsSource(cls)())
        except ValueError as exc:  # a variable holding JSON that does not parse
            raise ConfigError(f"invalid environment variable: {exc}") from None
        values.update(given)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(describe_invalid(exc, values)) from None


def machine_timezone() -> str:
    """The IANA name of this machine's zone (``TZ``, then ``/etc/localtime``), else UTC."""
    try:
        return tzlocal.get_localzone_name() or "UTC"
    except (LookupError, ValueError, OSError):
        return "UTC"


def describe_invalid(exc: ValidationError, values: Mapping[str, Any] | None = None) -> str:
    """One line naming each invalid setting and why, without echoing values (they may be secret).

    An entry of a list of tables (``[[sources]]``) is named by its number and,
    when it has a readable one, its ``name``: ``sources entry 2 ('router'): kind: ...``.
    """
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        loc = error["loc"]
        if len(loc) >= 2 and isinstance(loc[1], int):
            entry = f"{loc[0]} entry {loc[1] + 1}{_entry_name(values, loc[0], loc[1])}"
            loc = (entry, *loc[2:])
        where = ": ".join(str(part) for part in loc) or "settings"
        problems.append(f"{where}: {message}")
    return "invalid settings: " + "; ".join(problems)


def _entry_name(values: Mapping[str, Any] | None, table: object, index: int) -> str:
    """`` ('name')`` for entry ``index`` of ``table`` in ``values``, if it has a plain name."""
    entries = (values or {}).get(str(table))
    if isinstance(entries, list | tuple) and index < len(entries):
        entry = entries[index]
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and name.isprintable() and len(name) <= 40:
            return f" ({name!r})"
    return ""


class ConnectionSettings(LayeredSettings):
    """Where the relay listens, where its client token is, and the zone days are counted in:
    what clients need too."""

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    client_token_file: Path | None = Field(
        default=None, description="the client token (default: config dir / client-token)"
    )
    timezone: str = Field(
        default_factory=machine_timezone,
        description="IANA zone for reset times and days (default: the machine's zone)",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{name!r} is not an IANA time zone (e.g. Europe/London)") from None
        return name

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def client_token_path(self) -> Path:
        return self.client_token_file or default_client_token_path()

    def relay_url(self) -> str:
        """The WebSocket URL a client on this machine reaches the relay at."""
        host = "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host.strip("[]")
        shown = f"[{host}]" if ":" in host else host
        return f"ws://{shown}:{self.port}/ws"


def location_arguments() -> argparse.ArgumentParser:
    """The flags that say where the relay is, for ``serve`` and the client commands alike.

    A parent parser: a flag the user did not give is absent from the namespace
    (``LOCATION_FIELDS`` and ``config``), so the other layers still apply.
    """
    parser = argparse.ArgumentParser(
        add_help=False, allow_abbrev=False, argument_default=argparse.SUPPRESS
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="TOML config file (default: $USAGE_MONITOR_CONFIG or "
        "~/.config/usage-monitor/config.toml)",
    )
    parser.add_argument("--host", help="the relay's address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help=f"the relay's port (default: {DEFAULT_PORT})")
    return parser


def given(args: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
    """The settings among ``fields`` that the command line gave."""
    wanted = set(fields)
    return {name: value for name, value in vars(args).items() if name in wanted}
