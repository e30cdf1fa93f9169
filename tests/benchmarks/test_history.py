"""Smoke test of ``python -m benchmarks.history`` (docs/performance.md): it runs, no timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_history_benchmark_runs_on_a_small_store(tmp_path: Path) -> None:
    """On 2,000 rows the benchmark completes, prints its table and writes its figures."""
    output = tmp_path / "history.json"
    command = [sys.executable, "-m", "benchmarks.history", "--rows", "2000", "--repeat", "2"]
    command += ["--idle-seconds", "0.6", "--load-seconds", "0.5", "--output", str(output)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| get_history, no since, limit 5000: median / p99 / max (ms) |" in done.stdout
    document = json.loads(output.read_text())
    figures = document["figures"]
    assert figures["history_ms_500"]["n"] == figures["history_ms_5000"]["n"] == 2
    assert figures["load_queries"]["answered"] >= 1
    assert document["samples"]["history_ms_500"]
