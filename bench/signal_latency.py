"""Signal-to-next-stage latency: a run waits on a signal; how soon after the signal is sent
does the next stage start?

    uv run python bench/signal_latency.py [--db sqlite|postgres|both] [--runs 100]

For each of `--runs` runs of bench-approve (a signal stage on topic "go", then a stage), one
after another: create it, wait until it waits, send the signal from this process, and take
the next stage's started_at minus the signal's sent_at (both the database's clock, as the
rows record them). Two placements:

  in-process   a node host in this process serves the runs (an application embedding it)
  2 processes  a `stagewise worker` process serves them; its fallback polling is 30 s, so
               it is woken by the signal's commit (NOTIFY on PostgreSQL, the file watch on
               SQLite)

Prints one JSON line per measurement and a summary on stderr; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Bench, _aware, bench

from stagewise import RunClaimPending, RunCreate, RunSignal, StageStatus


async def _waiting(b: Bench, run_id: str) -> None:
    for _ in range(2000):
        async with b.backend.persistence.transaction() as tx:
            stages = {s.stage_id: s for s in await tx.stages.for_run(run_id)}
        if "wait" in stages and stages["wait"].status is StageStatus.SUSPENDED:
            return
        await asyncio.sleep(0.005)
    raise RuntimeError(f"run {run_id} never waited")


async def _latency(b: Bench, run_id: str) -> float:
    for _ in range(4000):
        async with b.backend.persistence.transaction() as tx:
            stages = {s.stage_id: s for s in await tx.stages.for_run(run_id)}
            signals = await tx.signals.for_run(run_id)
        after = stages.get("after")
        if after is not None and after.started_at is not None:
            sent = signals[0].sent_at
            return (_aware(after.started_at) - _aware(sent)).total_seconds() * 1000
        await asyncio.sleep(0.005)
    raise RuntimeError(f"run {run_id} never went on after its signal")


async def measure(db: str, placement: str, runs: int) -> dict[str, Any]:
    async with bench(db, 30.0) as b:
        if placement == "in-process":
            await b.start_local_host("signalled", concurrency=4)
        else:
            await b.start_worker("signalled", concurrency=4)
        await asyncio.sleep(0.5)  # the host's first tick is done: it is idle
        figures = []
        for i in range(runs + 3):
            created = await b.kernel.dispatch(RunCreate(workflow_id="bench-approve"))
            await b.kernel.dispatch(RunClaimPending(limit=1))  # as `stagewise run` does
            await _waiting(b, created.run_id)
            await b.kernel.dispatch(RunSignal(run_id=created.run_id, topic="go", payload=i))
            latency = await _latency(b, created.run_id)
            if i >= 3:  # warm-up runs are not counted
                figures.append(latency)
        await b.stop_workers()
    figures.sort()
    cuts = statistics.quantiles(figures, n=100, method="inclusive")
    result = {
        "bench": "signal-latency",
        "db": db,
        "placement": placement,
        "runs": runs,
        "p50_ms": round(statistics.median(figures), 1),
        "p99_ms": round(cuts[98], 1),
        "max_ms": round(figures[-1], 1),
    }
    print(json.dumps(result), flush=True)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results = [
        await measure(db, placement, args.runs)
        for db in dbs
        for placement in ("in-process", "2 processes")
    ]
    for r in results:
        print(
            f"{r['db']}, {r['placement']}: signal -> next stage p50 {r['p50_ms']} ms, "
            f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms ({r['runs']} runs)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    asyncio.run(main())
