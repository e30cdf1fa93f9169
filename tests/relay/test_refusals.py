"""Refusals: the first in full, then a line a minute with counts; failed accepts the same."""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

import anyio
import pytest

from relay.guard import AcceptErrors
from relay.refusals import Refusals


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "usage_monitor.relay"]


def test_the_first_refusal_is_logged_and_the_rest_of_the_minute_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A crowd within a minute is one line in full and one line of counts by kind."""
    clock = FakeClock()
    refusals = Refusals("connections", clock=clock)
    for n in range(1000):
        refusals.log("over the cap", "refused client %d", n)
    refusals.log("timed out", "timed out client %d", 1000)
    clock.now += 60
    refusals.log("over the cap", "refused client %d", 1001)
    assert lines(caplog) == [
        "refused client 0",
        "refused 1000 more connections in the last minute: 999 over the cap; 1 timed out",
    ]


def test_a_lasting_crowd_is_one_line_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """While refusals go on, each minute adds one summary and no line in full."""
    clock = FakeClock()
    refusals = Refusals("connections", clock=clock)
    for _ in range(3):
        for _ in range(10):
            refusals.log("over the cap", "refused a client")
        clock.now += 60
    refusals.flush()
    assert len(lines(caplog)) == 4
    assert lines(caplog)[0] == "refused a client"


def test_after_a_quiet_minute_the_next_refusal_is_logged_in_full(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A minute with nothing to count ends the rate limit."""
    clock = FakeClock()
    refusals = Refusals("connections", clock=clock)
    refusals.log("over the cap", "refused client %d", 1)
    clock.now += 61
    refusals.log("over the cap", "refused client %d", 2)
    assert lines(caplog) == ["refused client 1", "refused client 2"]


def test_a_burst_is_logged_in_full_before_counting(caplog: pytest.LogCaptureFixture) -> None:
    """With burst=3 the first three refusals of a minute get their own lines."""
    refusals = Refusals("requests", burst=3, clock=FakeClock())
    for n in range(5):
        refusals.log("for an unexpected Host", "refused request %d", n)
    refusals.flush()
    assert lines(caplog) == [
        "refused request 0",
        "refused request 1",
        "refused request 2",
        "refused 2 more requests in the last minute: 2 for an unexpected Host",
    ]


@pytest.mark.anyio
async def test_the_counts_are_logged_when_the_minute_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The summary does not wait for another refusal: a timer writes it."""
    summary = anyio.Event()

    class Waiter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "in the last minute" in record.getMessage():
                summary.set()

    handler = Waiter()
    logging.getLogger("usage_monitor.relay").addHandler(handler)
    try:
        refusals = Refusals("connections", interval=0.05)
        refusals.log("over the cap", "refused a client")
        refusals.log("over the cap", "refused a client")
        with anyio.fail_after(5):
            await summary.wait()
    finally:
        logging.getLogger("usage_monitor.relay").removeHandler(handler)
    assert lines(caplog)[-1] == "refused 1 more connections in the last minute: 1 over the cap"


def accept_failure(code: int) -> dict[str, Any]:
    return {
        "message": "socket.accept() out of system resource",
        "exception": OSError(code, "Too many open files"),
    }


@pytest.mark.anyio
async def test_failed_accepts_are_counted_not_logged_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Thousands of EMFILE reports from asyncio's accept loop make one line, no traceback."""
    loop = asyncio.get_running_loop()
    handler = AcceptErrors(Refusals("connections"))
    handler.install(loop)
    try:
        for _ in range(5000):
            loop.call_exception_handler(accept_failure(errno.EMFILE))
        loop.call_exception_handler(accept_failure(errno.ENFILE))
    finally:
        handler.uninstall()
        handler.refusals.flush()
    assert len(caplog.records) == 2
    assert not [record for record in caplog.records if record.exc_info]
    assert "4999 not accepted, out of open files (EMFILE)" in caplog.records[1].getMessage()


@pytest.mark.anyio
async def test_other_loop_errors_reach_the_previous_handler() -> None:
    """Only failed accepts are taken; everything else goes where it went before."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))
    handler = AcceptErrors(Refusals("connections"))
    try:
        handler.install(loop)
        other = {"message": "Task exception was never retrieved", "exception": ValueError()}
        loop.call_exception_handler(other)
        handler.uninstall()
        restored = loop.get_exception_handler()
    finally:
        loop.set_exception_handler(previous)
    assert seen == [other]
    assert restored is not handler
