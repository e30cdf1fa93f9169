"""Smoke test of ``python -m benchmarks.reports`` (docs/performance.md): it runs, no timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("picows", reason="the load generator needs the bench extras")


def test_report_catchup_benchmark_runs_at_its_smallest(tmp_path: Path) -> None:
    """Two sources x three days, 20 subscribers: every report is accepted once, under its
    own key, in both parts, and the table is printed."""
    output = tmp_path / "reports.json"
    command = [sys.executable, "-m", "benchmarks.reports", "--sources", "2", "--days", "3"]
    command += ["--subscribers", "20", "--baseline-seconds", "0.3", "--runs", "1"]
    command += ["--output", str(output)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| during the catch-up of 6 reports |" in done.stdout
    assert "| cold start, no clients: relay started → all accepted |" in done.stdout
    assert "Receiver: 6 of 6 reports accepted in every catch-up" in done.stdout
    document = json.loads(output.read_text())
    assert document["expected_reports"] == 6
    (run,) = document["runs"]
    for part in ("cold", "load"):
        receiver = run[part]["receiver"]
        assert receiver["accepted"] == 6
        assert receiver["missing"] == receiver["unexpected"] == 0
        assert receiver["keys_with_several_bodies"] == 0
        assert run[part]["health"]["pending"] == run[part]["health"]["failed"] == 0
    windows = run["load"]["windows"]
    assert all(windows[name]["updates"] >= 1 for name in ("before", "during", "after"))
    assert all(window["delivered_pct"] == 100 for window in windows.values())
