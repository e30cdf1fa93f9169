"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run every async test on asyncio, the backend uvicorn serves on."""
    return "asyncio"
