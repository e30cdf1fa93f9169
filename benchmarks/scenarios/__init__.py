"""
The six scenarios. Each is ``async def run(adapter, env, config) -> list[Sample]``
and starts (and stops) its own server and load generators.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..adapter import Adapter, Env
from ..config import Config
from ..stats import Sample
from . import crowd, fanout, latest, memory, storm, upstream

__all__ = ["SCENARIOS", "Scenario"]

Scenario = Callable[[Adapter, Env, Config], Awaitable[list[Sample]]]

#: in the order they run and are reported
SCENARIOS: dict[str, Scenario] = {
    "fanout": fanout.run,
    "storm": storm.run,
    "latest": latest.run,
    "memory": memory.run,
    "upstream": upstream.run,
    "crowd": crowd.run,
}
