"""Where usage-monitor keeps its files on this machine (XDG base directories)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["CONFIG_ENV", "config_dir", "default_config_file", "state_dir"]

#: Names the config file, overriding the default.
CONFIG_ENV: Final = "USAGE_MONITOR_CONFIG"


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "usage-monitor"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "usage-monitor"


def default_config_file() -> Path:
    """``$USAGE_MONITOR_CONFIG``, else ``config.toml`` in the config directory."""
    return Path(os.environ.get(CONFIG_ENV) or config_dir() / "config.toml")
