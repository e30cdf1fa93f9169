"""
Rate limits, without I/O: token buckets with an injectable clock.

A ``TokenBucket`` holds up to ``burst`` tokens and gains ``per_second`` tokens
each second; every request takes one. A ``RateLimiter`` adds *episodes* to a
bucket: an episode starts with the first refused request and lasts until the
bucket has refilled completely, i.e. until the client has slowed down for good.
Episodes let the caller log one line per episode instead of one per frame, and
spot a client that keeps flooding (``Verdict.FLOODING`` once more than
``close_after`` requests were refused in one episode).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

__all__ = [
    "MAX_FRAME_BYTES",
    "Clock",
    "ConnectionLimiters",
    "Limits",
    "Rate",
    "RateLimiter",
    "TokenBucket",
    "Verdict",
]

#: Requests are tiny; a frame over this closes the connection with 1009.
MAX_FRAME_BYTES: Final = 64 * 1024

#: Seconds, rising, from an arbitrary origin (``time.monotonic`` by default).
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_second`` tokens a second, at most ``burst`` saved up."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not self.per_second > 0:
            raise ValueError("a rate must be positive")
        if self.burst < 1:
            raise ValueError("a burst must be at least 1")

    def describe(self) -> str:
        """The rate as a person reads it: "6 a minute, 5 at once"."""
        per_second = self.per_second
        pace = f"{per_second:g} a second" if per_second >= 1 else f"{per_second * 60:g} a minute"
        return f"{pace}, {self.burst} at once"


class TokenBucket:
    """Starts full; ``take()`` spends one token if there is one."""

    def __init__(self, rate: Rate, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate.burst)
        self._stamp = clock()

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    @property
    def full(self) -> bool:
        return self.tokens >= self.rate.burst

    def take(self) -> bool:
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def retry_after(self) -> float:
        """Seconds until the next token (0 if one is there now)."""
        return max(0.0, (1 - self.tokens) / self.rate.per_second)

    def _refill(self) -> None:
        now = self._clock()
        # A clock that steps back (it should not) never costs tokens.
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(float(self.rate.burst), self._tokens + elapsed * self.rate.per_second)


class Verdict(Enum):
    ALLOWED = "allowed"
    LIMITED = "limited"
    #: Refused, and more than ``close_after`` were refused in this episode.
    FLOODING = "flooding"


class RateLimiter:
    """A token bucket that counts the refusals of the current episode."""

    def __init__(
        self, rate: Rate, *, close_after: int | None = None, clock: Clock = time.monotonic
    ) -> None:
        self.bucket = TokenBucket(rate, clock)
        self.close_after = close_after
        #: Requests refused since the episode began; 0 outside an episode.
        self.refused = 0

    @property
    def episode_started(self) -> bool:
        """True right after the refusal that began an episode: the moment to log it."""
        return self.refused == 1

    def check(self) -> Verdict:
        if self.bucket.full:
            self.refused = 0  # the client slowed down: the episode (if any) is over
        if self.bucket.take():
            return Verdict.ALLOWED
        self.refused += 1
        if self.close_after is not None and self.refused > self.close_after:
            return Verdict.FLOODING
        return Verdict.LIMITED

    def retry_after(self) -> float:
        return self.bucket.retry_after()


@dataclass(frozen=True, slots=True)
class ConnectionLimiters:
    """One connection's limiters: every request, and refreshes on top."""

    requests: RateLimiter
    refreshes: RateLimiter


@dataclass(frozen=True, slots=True)
class Limits:
    """The per-connection limits; ``flood_close_after`` refusals in one episode close it."""

    requests: Rate = Rate(per_second=20.0, burst=40)
    refreshes: Rate = Rate(per_second=6 / 60, burst=5)
    flood_close_after: int | None = 100

    def limiters(self, clock: Clock = time.monotonic) -> ConnectionLimiters:
        return ConnectionLimiters(
            RateLimiter(self.requests, close_after=self.flood_close_after, clock=clock),
            RateLimiter(self.refreshes, clock=clock),
        )
