"""
Threshold and projection alerts, at most once per meter, threshold and window.

A tracker watches the meters with a percentage of one source; a window is
identified by its ``reset_at`` (within ``RESET_JITTER``). The
tracker's marks are plain JSON (``state()``) so that a restart does not warn
again about a threshold already announced in the current window.

The configured thresholds announce only the highest one reached. The alert
rules of a shared ``RuleBook`` (set at run time) each fire on their own, once
per meter and window, so rules at 50, 80 and 95 give three warnings as usage
grows, and all three at once after a jump from 40 to 96.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field, TypeAdapter, ValidationError

from common.models import Alert, Derived, LimitProjected, Snapshot, ThresholdCrossed

from .forecast import same_window
from .rules import RuleBook

__all__ = ["ThresholdTracker"]

logger = logging.getLogger("usage_monitor.alerts")


class _WindowMarks(BaseModel):
    reset_at: AwareDatetime | None
    crossed: set[float] = Field(default_factory=set)
    projected: bool = False
    #: The ids of the alert rules that fired in this window.
    rules: set[str] = Field(default_factory=set)


# Keyed by meter id; the state saved before sources had meters is keyed the same way.
_STATE = TypeAdapter(dict[str, _WindowMarks])


class ThresholdTracker:
    """Turns successive snapshots into alerts; ``state()`` persists what was already said."""

    def __init__(
        self,
        thresholds: Sequence[float] = (50, 75, 90, 100),
        state: dict[str, Any] | None = None,
        rules: RuleBook | None = None,
    ) -> None:
        self._thresholds = sorted({float(t) for t in thresholds})
        self._rules = rules
        self._marks: dict[str, _WindowMarks] = {}
        if state:
            try:
                self._marks = _STATE.validate_python(state)
            except ValidationError as exc:
                # Losing the marks costs at most one repeated warning; refusing to start costs more.
                logger.warning("ignoring unreadable alert state: %s", exc)

    def observe(self, snapshot: Snapshot, derived: Derived | None = None) -> list[Alert]:
        """Alerts newly due after this snapshot (and its forecast, if given)."""
        alerts: list[Alert] = []
        for meter in snapshot.meters:
            used_percent = meter.used_percent
            if used_percent is None:
                continue
            marks = self._marks.get(meter.id)
            if marks is None or not same_window(marks.reset_at, meter.reset_at):
                marks = self._marks[meter.id] = _WindowMarks(reset_at=meter.reset_at)
            # Follow the jitter so that a slow drift never looks like a new window.
            marks.reset_at = meter.reset_at
            about = {"source": snapshot.source, "bucket": meter.id, "label": meter.label}

            reached = [t for t in self._thresholds if used_percent >= t]
            if reached and reached[-1] not in marks.crossed:
                alerts.append(
                    ThresholdCrossed(
                        **about,
                        threshold=reached[-1],
                        used_percent=used_percent,
                        reset_at=meter.reset_at,
                    )
                )
            marks.crossed.update(reached)
            alerts.extend(self._rule_alerts(marks, about, used_percent, meter.reset_at))

            forecast = derived.get(meter.id) if derived is not None else None
            if (
                forecast is None
                or marks.projected
                or used_percent >= 100  # a reached limit is no longer a forecast
                or forecast.projected_limit_at is None
                or forecast.burn_rate_percent_per_hour is None
            ):
                continue
            marks.projected = True
            alerts.append(
                LimitProjected(
                    **about,
                    projected_at=forecast.projected_limit_at,
                    reset_at=meter.reset_at,
                    burn_rate_percent_per_hour=forecast.burn_rate_percent_per_hour,
                )
            )
        return alerts

    def _rule_alerts(
        self,
        marks: _WindowMarks,
        about: dict[str, Any],
        used_percent: float,
        reset_at: datetime | None,
    ) -> list[Alert]:
        """One alert per rule newly reached on this meter; deleted rules are forgotten."""
        if self._rules is None:
            return []
        marks.rules.intersection_update(rule.id for rule in self._rules)
        alerts: list[Alert] = []
        for rule in self._rules.matching(about["source"], about["bucket"]):
            if used_percent < rule.threshold_percent or rule.id in marks.rules:
                continue
            marks.rules.add(rule.id)
            alerts.append(
                ThresholdCrossed(
                    **about,
                    threshold=rule.threshold_percent,
                    used_percent=used_percent,
                    reset_at=reset_at,
                    rule=rule.id,
                )
            )
        return alerts

    def state(self) -> dict[str, Any]:
        """JSON-serialisable marks, to pass back as ``state=`` after a restart."""
        state: dict[str, Any] = _STATE.dump_python(self._marks, mode="json")
        return state
