"""
Alert rules set at run time: one shared, mutable rule book (``accounting-v1.md``, section 4).

Every source's ``ThresholdTracker`` reads the same ``RuleBook`` at each
snapshot, so a rule added or deleted takes effect at the next poll of every
source. The book is kept in the store as a JSON list under ``RULES_KEY``;
``add`` and ``remove`` change the book only once the new list is saved, so
what the API answers is what a restart will find.

A rule's ``webhook_url`` is a secret: it is never logged, and ``webhook_for``
hands it only to the webhook notifier.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, Protocol

import anyio
from pydantic import TypeAdapter, ValidationError

from common.models import Alert, AlertRule, ThresholdCrossed

from .exceptions import StoreError

__all__ = ["MAX_RULES", "RULES_KEY", "RuleBook", "RuleStore", "new_rule_id"]

logger = logging.getLogger("usage_monitor.rules")

#: Where the store keeps the rules.
RULES_KEY: Final = "alert_rules"
#: A bound on what one client can make every poll evaluate and the store keep.
MAX_RULES: Final = 100

_RULE = TypeAdapter(AlertRule)

Saver = Callable[[list[dict[str, Any]]], Awaitable[None]]


class RuleStore(Protocol):
    """The part of ``AsyncSnapshotStore`` the rule book uses."""

    async def save_value(self, key: str, value: Any) -> None: ...

    async def load_value(self, key: str) -> Any: ...


def new_rule_id() -> str:
    """A short random id (8 URL-safe characters)."""
    return secrets.token_urlsafe(6)


class RuleBook:
    """The alert rules, by id, in the order they were added.

    Without a store (``RuleBook(rules)``) it is a plain in-memory book, for
    trackers in tests. ``load`` makes one that saves every change first.
    """

    def __init__(self, rules: tuple[AlertRule, ...] | list[AlertRule] = ()) -> None:
        self._rules: dict[str, AlertRule] = {rule.id: rule for rule in rules}
        self._save: Saver | None = None
        #: Why the stored rules could not be read at start; changes are refused then,
        #: lest saving overwrite rules that are still on disk.
        self.unavailable: str | None = None
        self._lock = anyio.Lock()

    @classmethod
    async def load(cls, store: RuleStore) -> RuleBook:
        """The rules ``store`` keeps; entries that do not read as a rule are left out."""
        book = cls()

        async def save(value: list[dict[str, Any]]) -> None:
            await store.save_value(RULES_KEY, value)

        book._save = save
        try:
            stored = await store.load_value(RULES_KEY)
        except StoreError as exc:
            logger.error("alert rules cannot be read; they cannot be changed either: %s", exc)
            book.unavailable = "the stored alert rules cannot be read"
            return book
        if stored is not None:
            book.replace(stored)
        return book

    def share(self, save: Saver) -> None:
        """Save every change with ``save`` too, after the store (a team relay's Redis)."""
        keep = self._save

        async def save_both(value: list[dict[str, Any]]) -> None:
            if keep is not None:
                await keep(value)
            await save(value)

        self._save = save_both

    def replace(self, stored: Any) -> None:
        """Hold the rules of ``stored`` (as the store keeps them) instead of the current ones;
        entries that do not read as a rule are left out."""
        if not isinstance(stored, list):
            logger.warning("ignoring stored alert rules that are not a list")
            return
        rules = {}
        for number, entry in enumerate(stored, 1):
            try:
                rule = _RULE.validate_python(entry)
            except ValidationError as exc:
                # Field names and messages only: the input may hold a webhook URL.
                problems = "; ".join(
                    f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
                )
                logger.warning("ignoring stored alert rule %d: %s", number, problems)
                continue
            rules[rule.id] = rule
        self._rules = rules

    def stored(self) -> list[dict[str, Any]]:
        """The rules as the store keeps them."""
        return [rule.stored() for rule in self._rules.values()]

    def __iter__(self) -> Iterator[AlertRule]:
        return iter(list(self._rules.values()))

    def __len__(self) -> int:
        return len(self._rules)

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self._rules

    def get(self, rule_id: str) -> AlertRule | None:
        return self._rules.get(rule_id)

    def matching(self, source: str, meter: str) -> list[AlertRule]:
        """The rules that watch ``meter`` of ``source``, lowest threshold first."""
        found = [rule for rule in self._rules.values() if rule.matches(source, meter)]
        return sorted(found, key=lambda rule: rule.threshold_percent)

    def webhook_for(self, alert: Alert) -> str | None:
        """The URL of the webhook of the rule that fired ``alert``; None: the configured one."""
        if not isinstance(alert, ThresholdCrossed) or alert.rule is None:
            return None
        rule = self._rules.get(alert.rule)
        if rule is None or rule.webhook_url is None:
            return None
        return rule.webhook_url.get_secret_value()

    async def add(self, rule: AlertRule) -> None:
        """Save the book with ``rule``, then add it; raises ``StoreError`` (nothing added), or
        ``ValueError`` when the book already holds ``MAX_RULES``."""
        async with self._lock:
            if len(self._rules) >= MAX_RULES:
                raise ValueError(f"too many alert rules: at most {MAX_RULES}; delete one first")
            rules = [*self._rules.values(), rule]
            await self._persist(rules)
            self._rules[rule.id] = rule

    async def remove(self, rule_id: str) -> AlertRule | None:
        """Save the book without the rule, then drop it; None if there is no such rule."""
        async with self._lock:
            rule = self._rules.get(rule_id)
            if rule is None:
                return None
            await self._persist([kept for kept in self._rules.values() if kept.id != rule_id])
            del self._rules[rule_id]
            return rule

    async def _persist(self, rules: list[AlertRule]) -> None:
        if self.unavailable is not None:
            raise StoreError(self.unavailable)
        if self._save is not None:
            await self._save([rule.stored() for rule in rules])
