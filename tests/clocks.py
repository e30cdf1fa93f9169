"""A clock the tests move by hand, shared by a simulator and the code under test."""

from __future__ import annotations

from datetime import datetime, timedelta


class FakeClock:
    """An aware "now" that moves only when a test moves it, so windows roll without sleeping."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)
