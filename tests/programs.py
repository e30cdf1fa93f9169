"""System programs the tests drive (Chromium, redis-server), which `make test` installs."""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["require_program"]


def require_program(command: str, name: str, package: str) -> str:
    """Return the path of ``command``; fail under CI, skip elsewhere, when it is missing."""
    path = shutil.which(command)
    if path is None:
        message = (
            f"{name} is not installed: install it with `apt-get install {package}` "
            "(make test does this)"
        )
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path
