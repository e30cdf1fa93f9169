"""The keyed mailbox behind subscriptions and connection outboxes."""

from __future__ import annotations

import anyio
import pytest

from monitor.mailbox import Mailbox


def drain(mailbox: Mailbox[str]) -> list[str]:
    return [mailbox.pop() for _ in range(len(mailbox))]


def test_a_newer_item_replaces_the_undelivered_one_with_its_key() -> None:
    """At most one item per key waits; the newest wins."""
    mailbox: Mailbox[str] = Mailbox()
    mailbox.put("usage", "old")
    mailbox.put("usage", "new")
    assert drain(mailbox) == ["new"]


def test_a_replaced_item_moves_behind_earlier_ones() -> None:
    """Delivery follows arrival order, so a replacement never overtakes older items."""
    mailbox: Mailbox[str] = Mailbox()
    mailbox.put("usage", "snapshot 1")
    mailbox.put("status", "degraded")
    mailbox.put("usage", "snapshot 2")
    assert drain(mailbox) == ["degraded", "snapshot 2"]


@pytest.mark.anyio
async def test_wait_returns_when_an_item_arrives() -> None:
    """A waiting reader wakes up for a put."""
    mailbox: Mailbox[str] = Mailbox()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(mailbox.wait, lambda: False)
            await anyio.wait_all_tasks_blocked()
            mailbox.put("usage", "snapshot")
    assert drain(mailbox) == ["snapshot"]


@pytest.mark.anyio
async def test_wait_returns_on_wake_once_the_stop_condition_holds() -> None:
    """An empty mailbox releases its reader when woken with its stop condition true."""
    mailbox: Mailbox[str] = Mailbox()
    stopped = False
    with anyio.fail_after(5):
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(mailbox.wait, lambda: stopped)
            await anyio.wait_all_tasks_blocked()
            stopped = True
            mailbox.wake()
    assert len(mailbox) == 0
