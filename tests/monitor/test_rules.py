"""Alert rules set at run time: the shared rule book, its persistence, and how trackers use it."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import pytest

from common.backoff import Backoff
from common.models import AlertRule, Meter, Snapshot, ThresholdCrossed
from monitor.alerts import ThresholdTracker
from monitor.exceptions import StoreError
from monitor.rules import MAX_RULES, RULES_KEY, RuleBook
from monitor.service import AlertRaised
from monitor.webhook import WebhookNotifier
from tests.monitor.test_alerts import BURST_RESET, snap
from tests.monitor.test_webhook import Receiver, serve

pytestmark = pytest.mark.anyio

SECRET_URL = "https://hooks.example.com/services/T000/B000/very-secret"


def rule(rule_id: str, threshold: float, **fields: Any) -> AlertRule:
    return AlertRule(id=rule_id, threshold_percent=threshold, **fields)


def progressive() -> RuleBook:
    return RuleBook([rule("r50", 50), rule("r80", 80), rule("r95", 95)])


def fired(alerts: list[Any]) -> list[tuple[str, str | None, float]]:
    """(meter, rule, threshold) of the rule alerts among ``alerts``."""
    return [
        (a.bucket, a.rule, a.threshold)
        for a in alerts
        if isinstance(a, ThresholdCrossed) and a.rule is not None
    ]


def quiet_tracker(book: RuleBook, state: dict[str, Any] | None = None) -> ThresholdTracker:
    """A tracker whose configured threshold (100) stays out of the way."""
    return ThresholdTracker((100,), state=state, rules=book)


class MemoryStore:
    """The store's ``save_value``/``load_value``, in memory, failing on demand."""

    def __init__(self, value: Any = None) -> None:
        self.values: dict[str, Any] = {} if value is None else {RULES_KEY: value}
        self.fail_saves = False
        self.fail_loads = False

    async def save_value(self, key: str, value: Any) -> None:
        if self.fail_saves:
            raise StoreError("disk full")
        self.values[key] = json.loads(json.dumps(value))

    async def load_value(self, key: str) -> Any:
        if self.fail_loads:
            raise StoreError("unreadable")
        return self.values.get(key)


# -- evaluation ----------------------------------------------------------------------


def test_rules_fire_progressively_as_usage_grows() -> None:
    """Rules at 50, 80 and 95 each fire once, in turn, as usage climbs."""
    tracker = quiet_tracker(progressive())
    steps = [fired(tracker.observe(snap(p))) for p in (40, 55, 70, 85, 97)]
    assert steps == [
        [],
        [("burst", "r50", 50)],
        [],
        [("burst", "r80", 80)],
        [("burst", "r95", 95)],
    ]


def test_a_jump_fires_every_rule_it_passes() -> None:
    """Going from 40 to 96 fires the 50, 80 and 95 rules at once, lowest first."""
    tracker = quiet_tracker(progressive())
    tracker.observe(snap(40))
    assert [r for _, r, _ in fired(tracker.observe(snap(96)))] == ["r50", "r80", "r95"]


def test_a_rule_fires_once_per_window() -> None:
    """Staying over a rule's threshold, or dipping and rising again, does not repeat it."""
    tracker = quiet_tracker(RuleBook([rule("r50", 50, meter="burst")]))
    tracker.observe(snap(60))
    assert fired(tracker.observe(snap(45)) + tracker.observe(snap(70))) == []


def test_a_new_window_fires_the_rule_again() -> None:
    """After the window resets the rule is armed again."""
    tracker = quiet_tracker(RuleBook([rule("r50", 50, meter="burst")]))
    tracker.observe(snap(60))
    next_reset = BURST_RESET + timedelta(hours=24)
    tracker.observe(snap(1, burst_reset=next_reset))
    assert fired(tracker.observe(snap(55, burst_reset=next_reset))) == [("burst", "r50", 50)]


def test_the_marks_survive_a_restart() -> None:
    """A tracker built from a JSON round-trip of state() does not fire the rule again."""
    book = progressive()
    before = quiet_tracker(book)
    before.observe(snap(85))
    after = quiet_tracker(book, json.loads(json.dumps(before.state())))
    assert fired(after.observe(snap(90))) == []
    assert fired(after.observe(snap(96))) == [("burst", "r95", 95)]


def test_state_from_before_rules_is_read() -> None:
    """Marks saved without rule ids still restore the configured thresholds' marks."""
    old = {"burst": {"reset_at": BURST_RESET.isoformat(), "crossed": [50.0], "projected": False}}
    tracker = ThresholdTracker((50,), state=old, rules=progressive())
    alerts = tracker.observe(snap(60))
    assert [(a.threshold, a.rule) for a in alerts if isinstance(a, ThresholdCrossed)] == [
        (50, "r50")
    ]


async def test_a_deleted_rule_stops_firing_at_once() -> None:
    """Once removed from the book, a rule fires no more and its marks are forgotten."""
    book = progressive()
    tracker = quiet_tracker(book)
    tracker.observe(snap(55))
    await book.remove("r80")
    assert fired(tracker.observe(snap(85))) == []
    assert "r50" in tracker.state()["burst"]["rules"]
    assert "r80" not in json.dumps(tracker.state())


def test_rules_match_their_source_and_meter() -> None:
    """A rule for another meter or another source ignores this one; None matches all."""
    book = RuleBook(
        [
            rule("mine", 50, source="default", meter="burst"),
            rule("monthly", 50, meter="sustained"),
            rule("elsewhere", 50, source="eu"),
            rule("all", 50),
        ]
    )
    alerts = quiet_tracker(book).observe(snap(60, 10))
    assert sorted(r for _, r, _ in fired(alerts)) == ["all", "mine"]


def test_meters_without_a_percent_are_not_watched() -> None:
    """A meter with no limit (used_percent null) never fires a rule."""
    snapshot = Snapshot.model_validate(
        {
            "seq": 1,
            "source": "router",
            "kind": "openrouter",
            "fetched_at": BURST_RESET,
            "usage": {},
            "meters": [Meter(id="today", label="Today", unit="usd", used=99.0).model_dump()],
        }
    )
    assert quiet_tracker(RuleBook([rule("any", 1)])).observe(snapshot) == []


def test_configured_thresholds_work_as_before_beside_rules() -> None:
    """The defaults still announce only the highest threshold reached, without a rule."""
    tracker = ThresholdTracker((50, 75, 90), rules=RuleBook([rule("r80", 80)]))
    alerts = tracker.observe(snap(95))
    assert [(a.threshold, a.rule) for a in alerts if isinstance(a, ThresholdCrossed)] == [
        (90, None),
        (80, "r80"),
    ]


# -- the book and the store ----------------------------------------------------------


async def test_added_rules_are_saved_before_they_count() -> None:
    """``add`` saves the whole list under ``alert_rules``, webhook URL included."""
    store = MemoryStore()
    book = await RuleBook.load(store)
    await book.add(rule("r1", 80, webhook_url=SECRET_URL))
    assert [r["id"] for r in store.values[RULES_KEY]] == ["r1"]
    assert store.values[RULES_KEY][0]["webhook_url"] == SECRET_URL
    assert [r.id for r in await RuleBook.load(store)] == ["r1"]


async def test_a_failed_save_changes_nothing() -> None:
    """When the store refuses the write, the rule is neither added nor removed."""
    store = MemoryStore()
    book = await RuleBook.load(store)
    await book.add(rule("kept", 50))
    store.fail_saves = True
    with pytest.raises(StoreError):
        await book.add(rule("new", 60))
    with pytest.raises(StoreError):
        await book.remove("kept")
    assert [r.id for r in book] == ["kept"]


async def test_an_unreadable_store_refuses_changes() -> None:
    """Rules that cannot be read at start are not overwritten by a later save."""
    store = MemoryStore([rule("old", 50).stored()])
    store.fail_loads = True
    book = await RuleBook.load(store)
    with pytest.raises(StoreError):
        await book.add(rule("new", 60))
    assert store.values[RULES_KEY][0]["id"] == "old"


async def test_bad_stored_entries_are_skipped_without_their_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stored entry that is not a rule is left out, and the log does not quote it."""
    good = rule("good", 50).stored()
    bad = {"id": "bad", "threshold_percent": 500, "webhook_url": SECRET_URL}
    book = await RuleBook.load(MemoryStore([bad, good]))
    assert [r.id for r in book] == ["good"]
    assert "threshold_percent" in caplog.text
    assert "very-secret" not in caplog.text


async def test_the_book_holds_a_bounded_number_of_rules() -> None:
    """Past ``MAX_RULES`` an add is refused."""
    book = RuleBook([rule(f"r{n}", 50) for n in range(MAX_RULES)])
    with pytest.raises(ValueError, match="too many"):
        await book.add(rule("one-more", 50))


def test_a_rules_webhook_url_is_never_shown() -> None:
    """The repr hides the URL and ``public()`` shows only its scheme and host."""
    secret = rule("r", 50, webhook_url=SECRET_URL)
    assert "very-secret" not in repr(secret)
    assert secret.public()["webhook_url"] == "https://hooks.example.com/…"


# -- delivery ------------------------------------------------------------------------


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[Receiver, str, Receiver, str]]:
    """The configured webhook's receiver and a rule's, each on its own loopback server."""
    configured, own = Receiver(), Receiver()
    async for configured_url in serve(configured):
        async for own_url in serve(own):
            yield configured, configured_url, own, own_url


async def test_a_rules_alerts_go_to_its_own_webhook(
    receivers: tuple[Receiver, str, Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A rule with a webhook gets its alerts there; other alerts go to the configured one."""
    configured, configured_url, own, own_url = receivers
    book = RuleBook([rule("hooked", 80, webhook_url=own_url), rule("plain", 60)])
    tracker = ThresholdTracker((50,), rules=book)
    notifier = WebhookNotifier(
        configured_url, route=book.webhook_for, backoff=Backoff(initial=0.001, maximum=0.001)
    )
    caplog.set_level(logging.DEBUG, logger="usage_monitor")
    with anyio.fail_after(10):
        async with anyio.create_task_group() as task_group:
            await task_group.start(notifier.run)
            for alert in tracker.observe(snap(85)):
                notifier.observe(AlertRaised(alert))
            notifier.close()
    assert [r["data"]["rule"] for r in own.received] == ["hooked"]
    assert [r["data"]["rule"] for r in configured.received] == [None, "plain"]
    assert own.received[0]["event"] == "usage.threshold_crossed"
    assert own_url not in caplog.text
