"""Capped, jittered exponential backoff, shared by the poller and the clients."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number ``attempt`` (1-based): ``initial * factor**(attempt-1)``, capped.

    ``jitter`` is the fraction of the delay that is randomised away, so that
    many clients that failed together do not retry together.
    """

    initial: float = 1.0
    maximum: float = 120.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, random_fraction: Callable[[], float] = random.random) -> float:
        exponent = max(0, attempt - 1)
        # Cap the exponent too: factor**attempt overflows a float long before it matters.
        capped = min(self.maximum, self.initial * self.factor ** min(exponent, 64))
        return capped * (1.0 - self.jitter * random_fraction())
