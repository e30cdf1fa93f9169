"""
Smoke test of the benchmark suite (benchmarks/, docs/performance.md).

Runs the ``--quick`` variant against our relay and the bare broadcast peer over
real loopback sockets and checks that it completes and writes well-formed
JSON. It asserts nothing about timings. Needs the ``bench`` extras, which
``make test`` installs.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CROWDS = {
    "crowd",
    "crowd (none)",
    "crowd (idle sockets)",
    "crowd (idle sockets, reopened)",
    "crowd (unauthenticated WebSockets)",
}
SCENARIOS = {"fanout", "storm", "latest", "memory", "upstream", *CROWDS}


def test_quick_suite_against_ours_and_broadcast(tmp_path: Path) -> None:
    """The quick suite runs against the relay and the broadcast peer and writes its JSON."""
    output = tmp_path / "quick.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--servers",
            "ours,broadcast",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| scenario | metric | N | ours | broadcast | target |" in done.stdout

    document = json.loads(output.read_text())
    assert document["schema"] == "usage-monitor-benchmarks/1"
    assert document["variant"] == "quick"
    assert document["machine"]["cores"] >= 1
    assert document["machine"]["python"]
    assert document["servers"]["ours"]["available"], document["servers"]["ours"]
    assert document["servers"]["broadcast"]["available"]
    assert not [note for note in document["notes"] if "failed" in note], document["notes"]

    seen: dict[str, set[str]] = {"ours": set(), "broadcast": set()}
    for result in document["results"]:
        assert {"scenario", "metric", "n", "unit", "servers", "ratio_to_ours"} <= result.keys()
        assert result["scenario"] in SCENARIOS
        for server, figure in result["servers"].items():
            seen[server].add(result["scenario"])
            assert figure["runs"], result
            values = [figure["median"], figure["min"], figure["max"], *figure["runs"]]
            for value in values:
                assert value is None or (isinstance(value, int | float) and math.isfinite(value))
    assert seen["ours"] == SCENARIOS
    assert seen["broadcast"] == {"fanout", "memory"}

    verdicts = {(t["scenario"], t["metric"]) for t in document["targets"]}
    assert ("storm", "upstream requests") in verdicts
    assert document["samples"], "every run's raw samples are kept"
