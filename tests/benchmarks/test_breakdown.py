"""Smoke test of ``python -m benchmarks.breakdown`` (docs/performance.md): it runs, no timings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_breakdown_benchmark_runs_on_a_small_ledger() -> None:
    """On three days of two sources the benchmark completes and prints its table."""
    command = [sys.executable, "-m", "benchmarks.breakdown", "--days", "3", "--sources", "2"]
    command += ["--repeat", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| source,day | 8 |" in done.stdout
    assert "| source,meter,hour | 432 |" in done.stdout
