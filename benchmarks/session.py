"""One benchmark invocation: run in a scratch directory, note the machine and its load
before and after, write the figures as JSON on request."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from .procstat import machine_info

__all__ = ["Session", "run_session"]

T = TypeVar("T")


@dataclass(frozen=True)
class Session(Generic[T]):
    """What ``run`` returned, when it started, and the machine (with its load averages)."""

    result: T
    started_at: datetime
    machine: dict[str, Any]

    def load_average(self) -> str:
        before, after = self.machine["loadavg_before"][0], self.machine["loadavg_after"][0]
        return f"load average {before:.2f} before, {after:.2f} after"

    def write(self, path: Path, schema: str, arguments: dict[str, Any], **figures: Any) -> None:
        """Write the invocation and ``figures`` to ``path`` as JSON, and say where."""
        document = {
            "schema": schema,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "machine": self.machine,
            "arguments": arguments,
            **figures,
        }
        path.write_text(json.dumps(document, indent=2))
        print(f"\nJSON: {path}")


def run_session(prefix: str, run: Callable[[Path], Coroutine[Any, Any, T]]) -> Session[T]:
    """``run`` a fresh scratch directory (named ``prefix``...), removed afterwards."""
    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    started_at = datetime.now(UTC)
    machine["loadavg_before"] = os.getloadavg()
    try:
        result = asyncio.run(run(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine["loadavg_after"] = os.getloadavg()
    return Session(result, started_at, machine)
