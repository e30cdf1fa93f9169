"""Capped, jittered exponential backoff."""

from __future__ import annotations

from common.backoff import Backoff


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    """Delays double from the initial value and stop at the maximum."""
    backoff = Backoff(initial=1.0, maximum=10.0, factor=2.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_backoff_jitter_shortens_the_delay_by_at_most_its_fraction() -> None:
    """With jitter 0.5 a delay lies between half and all of the capped value."""
    backoff = Backoff(initial=4.0, maximum=4.0, jitter=0.5)
    assert backoff.delay(1, lambda: 0.0) == 4.0
    assert backoff.delay(1, lambda: 1.0) == 2.0


def test_backoff_of_a_huge_attempt_is_the_maximum() -> None:
    """An attempt number far past the cap gives the maximum instead of overflowing a float."""
    backoff = Backoff(initial=1.0, maximum=120.0, factor=2.0, jitter=0.0)
    assert backoff.delay(10_000) == 120.0
