"""Durable sleep: how late sleeps wake, and what a sleeping backlog costs the fleet.

    uv run python bench/sleep.py [--db sqlite|postgres|both] [--runs 200] [--sleepers 10000]
                                 [--rounds 2] [--w1 2000]

lateness   `--runs` runs of bench-nap (a -> a 2 s durable sleep -> c), created at once, on a
           `stagewise worker` process whose fallback polling intervals are all 30 s: every
           wake-up comes from a hint. Per run, from the stage rows (the database's clock):
           `resume` = the sleep stage's finished_at - its wake time, `next` = c's started_at
           - the wake time. p50 / p99 / max in ms.
backlog    W1 (bench/run.py: `--w1` runs of 3 stages, 1 worker x 10 slots) alone, and beside
           `--sleepers` runs asleep for 30 days (written as rows before the worker starts),
           alternating the order round by round. runs/s, and the worker's statements and
           transactions per stage, which show whether the sleepers cost anything.

Prints one JSON line per measurement and a summary on stderr; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import FULL, Bench, Sizes, _aware, bench, w1
from sqlalchemy import select
from workloads import NAP_SECONDS

from stagewise import Changeset, RunRecord, RunStatus, StageRecord, StageStatus

CHUNK = 1000
DAYS_30 = timedelta(days=30)


def _quantiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "p50": round(statistics.median(values), 1),
        "p99": round(cuts[98], 1),
        "max": round(values[-1], 1),
    }


async def lateness(db: str, runs: int) -> dict[str, Any]:
    from stagewise_sql import metadata

    stages = metadata.tables["stagewise_stages"]
    async with bench(db, 30.0) as b:
        await b.start_worker("napper", concurrency=10)
        await b.create_many("bench-nap", runs)
        counts = await b.wait_all_done("bench-nap", runs, within=300)
        await b.stop_workers()
        rows = await b.query(
            select(
                stages.c.run_id,
                stages.c.stage_id,
                stages.c.started_at,
                stages.c.finished_at,
                stages.c.suspend_state,
            ).where(stages.c.stage_id.in_(["nap", "c"]))
        )
    by_run: dict[str, dict[str, Any]] = {}
    for run_id, stage_id, started, finished, state in rows:
        by_run.setdefault(run_id, {})[stage_id] = (started, finished, state)
    resume, following = [], []
    for parts in by_run.values():
        _, woke, state = parts["nap"]
        envelope = json.loads(state) if isinstance(state, str) else state
        wake = datetime.fromisoformat(envelope["state"]["wake_at"])
        resume.append((_aware(woke) - wake).total_seconds() * 1000)
        following.append((_aware(parts["c"][0]) - wake).total_seconds() * 1000)
    result = {
        "bench": "sleep-lateness",
        "db": db,
        "runs": runs,
        "completed": counts["COMPLETED"],
        "sleep_s": NAP_SECONDS,
        "resume_ms": _quantiles(resume),
        "next_stage_ms": _quantiles(following),
    }
    print(json.dumps(result), flush=True)
    return result


def _sleeping(i: int, now: datetime) -> tuple[RunRecord, StageRecord]:
    run_id = f"sleeper-{i:07d}"
    wake = now + DAYS_30 + timedelta(seconds=i)
    run = RunRecord(
        run_id=run_id,
        workflow_id="bench-sleeper",
        status=RunStatus.RUNNING,
        input={"n": i},
        config={},
        created_at=now,
        updated_at=now,
        current_group=0,
        started_at=now,
    )
    stage = StageRecord(
        run_id=run_id,
        stage_id="nap",
        group_index=0,
        status=StageStatus.SUSPENDED,
        created_at=now,
        updated_at=now,
        attempt=1,
        started_at=now,
        due_at=wake,
        suspend_deadline=wake,
        suspend_state={
            "state": {"wake_at": wake.isoformat()},
            "poll_interval": DAYS_30.total_seconds(),
            "max_wait": DAYS_30.total_seconds(),
            "wait": "sleep",
        },
    )
    return run, stage


def sleepers(count: int) -> Any:
    async def load(b: Bench) -> None:
        now = b.kernel.clock.now()
        for start in range(0, count, CHUNK):
            rows = [_sleeping(i, now) for i in range(start, min(start + CHUNK, count))]
            changes = Changeset(
                new_runs=tuple(r for r, _ in rows), stages=tuple(s for _, s in rows)
            )
            async with b.backend.persistence.transaction() as tx:
                await tx.apply(changes)

    return load


async def backlog(db: str, variant: str, count: int, sizes: Sizes) -> dict[str, Any]:
    prepare = sleepers(count) if variant == "sleepers" else None
    label = {"bench": "sleep-backlog", "with": variant, "sleepers": count}
    return await w1(db, sizes, 2.0, "c10", prepare=prepare, label=label)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--sleepers", type=int, default=10_000)
    parser.add_argument("--w1", type=int, default=FULL.w1_runs)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip", choices=("lateness", "backlog"), default=None)
    args = parser.parse_args()
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    sizes = Sizes(**{**FULL.__dict__, "w1_runs": args.w1})
    summary = []
    for db in dbs:
        if args.skip != "lateness":
            late = await lateness(db, args.runs)
            summary.append(
                f"{db}: sleep {NAP_SECONDS:g}s x {args.runs}: resume late by "
                f"{late['resume_ms']} ms, next stage started {late['next_stage_ms']} ms after"
            )
        if args.skip == "backlog":
            continue
        results = []
        for r in range(args.rounds):
            order = ("alone", "sleepers") if r % 2 == 0 else ("sleepers", "alone")
            for variant in order:
                results.append(await backlog(db, variant, args.sleepers, sizes))
        for key in ("runs_per_s", "worker_stmts_per_stage", "worker_tx_per_stage"):
            alone = [x[key] for x in results if x["with"] == "alone"]
            beside = [x[key] for x in results if x["with"] == "sleepers"]
            ratio = statistics.median(beside) / statistics.median(alone)
            summary.append(
                f"{db}: W1 {key} alone {alone}, beside {args.sleepers} sleepers {beside} "
                f"({ratio:.2f})"
            )
    print("\n".join(summary), file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
