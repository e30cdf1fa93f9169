"""
Summaries, targets, the printed table and the JSON file.

Every figure is the median of the runs, with min and max; each peer is also
given as a ratio to ours (peer / ours). The table is Markdown, so it can be
pasted into docs/performance.md as it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stats import Sample, summarise

__all__ = ["Report", "Target"]

Key = tuple[str, str, int | None]


@dataclass
class Row:
    scenario: str
    metric: str
    n: int | None
    unit: str
    runs: dict[str, list[float]] = field(default_factory=dict)

    def summary(self, server: str) -> dict[str, float] | None:
        values = self.runs.get(server)
        return summarise(values) if values else None

    def median(self, server: str) -> float:
        summary = self.summary(server)
        return summary["median"] if summary else math.nan


@dataclass(frozen=True)
class Target:
    """A goal from the issue, checked against the row of the largest N of a metric."""

    scenario: str
    metric: str
    text: str
    check: Callable[[Row], bool | None]


def _below(limit: float) -> Callable[[Row], bool | None]:
    def check(row: Row) -> bool | None:
        value = row.median("ours")
        return None if math.isnan(value) else value < limit

    return check


def _fanout_p99(row: Row) -> bool | None:
    ours, trpc = row.median("ours"), row.median("trpc")
    if math.isnan(ours):
        return None
    return ours < 100 and (math.isnan(trpc) or ours <= trpc)


def _cpu_vs_broadcast(row: Row) -> bool | None:
    ours, bare = row.median("ours"), row.median("broadcast")
    if math.isnan(ours) or math.isnan(bare):
        return None
    return ours <= 1.5 * bare


def _one_request(row: Row) -> bool | None:
    runs = row.runs.get("ours")
    return None if not runs else all(v == 1 for v in runs)


def _storm_p99(rtt_row: Callable[[int | None], Row | None]) -> Callable[[Row], bool | None]:
    def check(row: Row) -> bool | None:
        rtt = rtt_row(row.n)
        ours = row.median("ours")
        if rtt is None or math.isnan(ours) or math.isnan(rtt.median("ours")):
            return None
        return ours < rtt.median("ours") + 50

    return check


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "—"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if value == int(value):
        return str(int(value))
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class Report:
    def __init__(self, servers: list[str]) -> None:
        self.servers = servers
        self.rows: dict[Key, Row] = {}
        self.samples: list[dict[str, Any]] = []
        self.targets = self._targets()

    def _targets(self) -> list[Target]:
        def rtt(n: int | None) -> Row | None:
            return self.rows.get(("storm", "upstream round trip", n))

        return [
            Target("fanout", "latency p99", "< 100 ms and <= trpc", _fanout_p99),
            Target("fanout", "CPU per subscriber-update", "<= 1.5 x broadcast", _cpu_vs_broadcast),
            Target("memory", "RSS per idle subscriber", "< 20 KiB", _below(20)),
            Target("storm", "upstream requests", "= 1", _one_request),
            Target("storm", "reply p99", "< upstream round trip + 50 ms", _storm_p99(rtt)),
        ]

    def add(self, server: str, run: int, samples: list[Sample]) -> None:
        for sample in samples:
            key = (sample.scenario, sample.metric, sample.n)
            row = self.rows.setdefault(key, Row(*key, sample.unit))
            row.runs.setdefault(server, []).append(float(sample.value))
            self.samples.append({"server": server, "run": run, **sample.__dict__})

    def _target_for(self, row: Row) -> Target | None:
        for target in self.targets:
            if (target.scenario, target.metric) == (row.scenario, row.metric):
                largest = max(
                    (r.n or 0 for r in self.rows.values() if r.metric == row.metric), default=0
                )
                if (row.n or 0) == largest:
                    return target
        return None

    def verdicts(self) -> list[dict[str, Any]]:
        out = []
        for row in self.rows.values():
            target = self._target_for(row)
            if target is not None:
                met = target.check(row)
                out.append(
                    {
                        "scenario": row.scenario,
                        "metric": row.metric,
                        "n": row.n,
                        "target": target.text,
                        "ours": row.median("ours"),
                        "met": met,
                    }
                )
        return out

    def table(self) -> str:
        head = ["scenario", "metric", "N", *self.servers, "target"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows.values():
            cells = [row.scenario, f"{row.metric} ({row.unit})" if row.unit else row.metric]
            cells.append("" if row.n is None else f"{row.n:,}")
            ours = row.median("ours")
            for server in self.servers:
                summary = row.summary(server)
                if summary is None:
                    cells.append("n/a")
                    continue
                cell = _fmt(summary["median"])
                if summary["min"] != summary["max"]:
                    cell += f" ({_fmt(summary['min'])}..{_fmt(summary['max'])})"
                if server != "ours" and ours and not math.isnan(ours):
                    ratio = summary["median"] / ours
                    if not math.isnan(ratio):
                        cell += f" x{ratio:.2g}"
                cells.append(cell)
            target = self._target_for(row)
            if target is None:
                cells.append("")
            else:
                met = target.check(row)
                mark = "?" if met is None else ("met" if met else "MISSED")
                cells.append(f"{target.text}: {mark}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        results = []
        for row in self.rows.values():
            ours = row.median("ours")
            entry: dict[str, Any] = {
                "scenario": row.scenario,
                "metric": row.metric,
                "n": row.n,
                "unit": row.unit,
                "servers": {},
                "ratio_to_ours": {},
            }
            for server, values in row.runs.items():
                entry["servers"][server] = {**summarise(values), "runs": values}
                if server != "ours" and ours and not math.isnan(ours):
                    entry["ratio_to_ours"][server] = summarise(values)["median"] / ours
            results.append(entry)
        document = {
            **meta,
            "results": results,
            "targets": self.verdicts(),
            "samples": self.samples,
        }
        cleaned: dict[str, Any] = _clean(document)
        return cleaned

    def write(self, path: Path, meta: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(meta), indent=2, ensure_ascii=False) + "\n")
