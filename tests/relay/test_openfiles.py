"""The open-file limit: raised to the hard one at start, and the connection cap fitted into it."""

from __future__ import annotations

import logging
import resource

import pytest

from relay.openfiles import RESERVE, fit_max_connections, raise_open_file_limit
from relay.server import fit_to_open_files
from relay.settings import Settings


class FakeLimits:
    """RLIMIT_NOFILE as resource.getrlimit/setrlimit see it, with a ceiling like the kernel's."""

    def __init__(self, soft: int, hard: int, ceiling: int | None = None) -> None:
        self.soft, self.hard, self.ceiling = soft, hard, ceiling

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        if self.ceiling is not None and limits[0] > self.ceiling:
            raise ValueError("not allowed to raise maximum limit")
        self.soft, self.hard = limits


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch) -> FakeLimits:
    fake = FakeLimits(1024, 524_288)
    monkeypatch.setattr(resource, "getrlimit", fake.getrlimit)
    monkeypatch.setattr(resource, "setrlimit", fake.setrlimit)
    return fake


def test_the_soft_limit_is_raised_to_the_hard_one(
    limits: FakeLimits, caplog: pytest.LogCaptureFixture
) -> None:
    """1,024 under a hard limit of 524,288 becomes 524,288, and the log says so."""
    caplog.set_level(logging.INFO, logger="usage_monitor")
    assert raise_open_file_limit() == 524_288
    assert limits.soft == 524_288
    assert "raised the open-file limit from 1024 to 524288" in caplog.messages


def test_an_unlimited_hard_limit_gets_the_highest_soft_one_allowed(limits: FakeLimits) -> None:
    """With no hard limit, the soft one goes as high as the system lets it (macOS: 10,240)."""
    limits.hard, limits.ceiling = resource.RLIM_INFINITY, 10_240
    assert raise_open_file_limit() == 10_240


def test_max_connections_fits_the_open_files_left_for_it() -> None:
    """The reserve and both unauthenticated groups come off the limit first."""
    assert fit_max_connections(10_000, 128, 1024) == 1024 - RESERVE - 2 * 128
    assert fit_max_connections(500, 128, 20_000) == 500
    assert fit_max_connections(10_000, 128, 200) == 1


def test_the_relay_lowers_max_connections_and_says_so(
    limits: FakeLimits, caplog: pytest.LogCaptureFixture
) -> None:
    """At a hard limit of 1,024 the relay runs with the fitted cap, not 10,000."""
    limits.hard = 1024
    fitted = fit_to_open_files(Settings())
    assert fitted.max_connections == 1024 - RESERVE - 2 * 128
    assert any("max_connections lowered from 10000" in line for line in caplog.messages)
