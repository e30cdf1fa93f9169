"""
Exceptions raised while reading this machine's configuration and credentials.

The tree::

    SetupError
    ├── ConfigError          a setting is invalid or the config file cannot be read
    └── ClientTokenError     the client token file is unsafe or unreadable

Both the relay (at start) and its clients (before connecting) read these
files, so both may raise them. Messages name the file and the setting at
fault and say what to do; they never contain a secret.
"""

from __future__ import annotations

__all__ = ["ClientTokenError", "ConfigError", "SetupError"]


class SetupError(Exception):
    """Base class of the errors in this machine's configuration and credentials."""


class ConfigError(SetupError):
    """A setting is invalid, or the config file cannot be read or parsed."""


class ClientTokenError(SetupError):
    """The client token file is unsafe or unreadable; the message says what to do."""
