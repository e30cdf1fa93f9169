"""Protocol sessions without a relay: stub topics and monitors for I/O-free tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.messages import DEFAULT_TOPIC
from common.models import Snapshot, Status
from relay.protocol import FrameEncoder, MonitorView


@dataclass
class FakeMonitor:
    """The smallest MonitorView: a status and a latest snapshot that a test can change."""

    status: Status = field(default_factory=lambda: Status(state="starting"))
    latest: Snapshot | None = None

    def get_latest(self) -> Snapshot | None:
        return self.latest


@dataclass
class StubTopic:
    """A topic as a session reads it."""

    monitor: MonitorView
    encoder: FrameEncoder


def topics(monitor: MonitorView, **sources: MonitorView) -> dict[str, StubTopic]:
    """``usage`` served by ``monitor``, and a ``usage:<name>`` topic for each of ``sources``."""
    served = {DEFAULT_TOPIC: StubTopic(monitor, FrameEncoder())}
    for name, source in sources.items():
        served[f"usage:{name}"] = StubTopic(source, FrameEncoder(f"usage:{name}"))
    return served
