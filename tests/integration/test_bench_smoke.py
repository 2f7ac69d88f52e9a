"""The benchmark runner works: `bench/run.py --quick` on SQLite prints one JSON result per
workload and variant, and every run it started completed. No figure is checked (benchmarks
report times; tests never assert them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_quick_benchmark_runs_every_workload_to_completion_on_sqlite() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--db", "sqlite", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    seen = {(r["workload"], r["variant"]) for r in results}
    assert {w for w, _ in seen} == {"W1", "W2", "W3", "W4"}, seen
    assert len(seen) == 8  # W1 x 3, W2 x 2 (worker, in-process), W3, W4 x 2
    for r in results:
        assert r["db"] == "sqlite"
        assert r["completed"] == r["runs"], r
        assert r["failed"] == 0, r
    assert (ROOT / "bench" / "results" / "latest.md").is_file()


@pytest.mark.slow
def test_the_purge_benchmark_runs_w1_alone_and_while_purging_on_sqlite() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "purge.py"), "--db", "sqlite", "--runs", "600",
         "--w1", "30", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["variant"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(results) == {"alone", "purging"}
    for r in results.values():
        assert r["w1_completed"] == 30, r
    assert results["alone"]["purged"] == 0
    assert 0 < results["purging"]["purged"] <= 600


@pytest.mark.slow
def test_the_sleep_benchmark_measures_lateness_and_w1_beside_sleepers_on_sqlite() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sleep.py"), "--db", "sqlite", "--runs", "10",
         "--sleepers", "500", "--w1", "30", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    late = next(r for r in results if r.get("bench") == "sleep-lateness")
    assert late["completed"] == 10
    assert late["resume_ms"]["p50"] >= 0  # never woken before its time
    backlog = {r["with"]: r for r in results if r.get("bench") == "sleep-backlog"}
    assert set(backlog) == {"alone", "sleepers"}
    assert all(r["completed"] == 30 for r in backlog.values())


@pytest.mark.slow
def test_the_signal_benchmark_measures_both_placements_on_sqlite() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "signal_latency.py"),
            "--db",
            "sqlite",
            "--runs",
            "5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert {r["placement"] for r in results} == {"in-process", "2 processes"}
    assert all(r["runs"] == 5 and r["p50_ms"] >= 0 for r in results)
