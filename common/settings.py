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

from pathlib import Path
from tomllib import TOMLDecodeError
from typing import Any, Final, Self

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .exceptions import ConfigError
from .hosts import WILDCARD_HOSTS
from .paths import default_config_file
from .tokens import default_client_token_path

__all__ = ["DEFAULT_PORT", "ENV_PREFIX", "ConnectionSettings", "LayeredSettings"]

DEFAULT_PORT: Final = 8765
ENV_PREFIX: Final = "USAGE_MONITOR_"


class LayeredSettings(BaseSettings):
    """Settings built from the layers above by ``load()``; the constructor takes values only."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

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
            raise ConfigError(describe_invalid(exc)) from None


def describe_invalid(exc: ValidationError) -> str:
    """One line naming each invalid setting and why, without echoing values (they may be secret)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        problems.append(f"{where}: {error['msg']}")
    return "invalid settings: " + "; ".join(problems)


class ConnectionSettings(LayeredSettings):
    """Where the relay listens and where its client token is: what clients need too."""

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    client_token_file: Path | None = Field(
        default=None, description="the client token (default: config dir / client-token)"
    )

    def client_token_path(self) -> Path:
        return self.client_token_file or default_client_token_path()

    def relay_url(self) -> str:
        """The WebSocket URL a client on this machine reaches the relay at."""
        host = "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host.strip("[]")
        shown = f"[{host}]" if ":" in host else host
        return f"ws://{shown}:{self.port}/ws"
