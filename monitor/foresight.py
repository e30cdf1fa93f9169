"""Burn rate, projection and threshold alerts for each new snapshot."""

from __future__ import annotations

from common.models import Alert, Snapshot

from .alerts import ThresholdTracker
from .forecast import Forecaster

__all__ = ["Foresight"]


class Foresight:
    """Adds the ``derived`` block to a snapshot and says which alerts it raises."""

    def __init__(self, forecaster: Forecaster, tracker: ThresholdTracker) -> None:
        self.forecaster = forecaster
        self.tracker = tracker

    def observe(self, snapshot: Snapshot) -> tuple[Snapshot, list[Alert]]:
        derived = self.forecaster.observe(snapshot)
        alerts = self.tracker.observe(snapshot, derived)
        return snapshot.model_copy(update={"derived": derived}), alerts
