"""Purging while the fleet works: W1 alone against W1 while `run.purge` deletes a backlog.

    uv run python bench/purge.py [--db sqlite|postgres|both] [--runs 100000] [--rounds 2]

Each measurement gets a database of its own holding `--runs` finished runs (a 3-stage run
each: its row, 3 stage rows, 5 events, 3 log lines; finished a year ago), then a worker
process runs W1 (`--w1` runs of 3 stages, 1x10). In the "purging" variant this process
purges the backlog meanwhile, batch after batch (`run.purge`, 500 per transaction, as
`stagewise runs purge` does). Rounds alternate the two variants' order. Prints one JSON line
per measurement, then W1's runs/s alone and while purging, and the purge's runs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import Bench, bench

from stagewise import (
    Changeset,
    EventRecord,
    LogRecord,
    RunPurge,
    RunRecord,
    RunStatus,
    StageRecord,
    StageStatus,
)

LONG_AGO = datetime(2025, 12, 1, tzinfo=UTC)
CHUNK = 1000


def finished_run(i: int) -> Changeset:
    """One finished run as its rows, finished a year ago."""
    run_id = f"old-{i:07d}"
    at = LONG_AGO + timedelta(seconds=i)
    run = RunRecord(
        run_id=run_id,
        workflow_id="bench-old",  # not W1's: W1's own runs are counted by their workflow
        status=RunStatus.COMPLETED,
        input={"n": i},
        config={},
        created_at=at,
        updated_at=at,
        current_group=2,
        event_seq=5,
        output={"n": i + 3},
        started_at=at,
        finished_at=at,
    )
    stages = tuple(
        StageRecord(
            run_id=run_id,
            stage_id=sid,
            group_index=g,
            status=StageStatus.COMPLETED,
            created_at=at,
            updated_at=at,
            output={"n": i + g + 1},
            started_at=at,
            finished_at=at,
        )
        for g, sid in enumerate(("one", "two", "three"))
    )
    kinds = ("run.created", "run.started", "stage.completed", "stage.completed", "run.completed")
    events = tuple(
        EventRecord(f"{run_id}-e{seq}", run_id, seq, kind, at, {"type": kind, "seq": seq})
        for seq, kind in enumerate(kinds, start=1)
    )
    logs = tuple(LogRecord(run_id, s.stage_id, 1, "info", "done", {"n": i}, at) for s in stages)
    return Changeset(new_runs=(run,), stages=stages, events=events, logs=logs)


async def load_backlog(b: Bench, count: int) -> None:
    for start in range(0, count, CHUNK):
        parts = [finished_run(i) for i in range(start, min(start + CHUNK, count))]
        changes = Changeset(
            new_runs=tuple(r for p in parts for r in p.new_runs),
            stages=tuple(s for p in parts for s in p.stages),
            events=tuple(e for p in parts for e in p.events),
            logs=tuple(line for p in parts for line in p.logs),
        )
        async with b.backend.persistence.transaction() as tx:
            await tx.apply(changes)


async def purge_all(b: Bench, stop: asyncio.Event) -> tuple[int, float]:
    """Purge the backlog until it is gone (or `stop`); (runs purged, seconds)."""
    began, purged = time.monotonic(), 0
    cutoff = LONG_AGO + timedelta(days=30)
    while not stop.is_set():
        result = await b.kernel.dispatch(RunPurge(finished_before=cutoff, limit=500))
        purged += result.purged
        if not result.more:
            break
    return purged, time.monotonic() - began


async def measure(db: str, variant: str, backlog: int, w1_runs: int) -> dict[str, Any]:
    async with bench(db, 2.0) as b:
        loading = time.monotonic()
        await load_backlog(b, backlog)
        loaded_s = time.monotonic() - loading
        await b.start_worker("purge-w1", concurrency=10)
        stop = asyncio.Event()
        purging = asyncio.ensure_future(purge_all(b, stop)) if variant == "purging" else None
        began = time.monotonic()
        await b.create_many("bench-three", w1_runs)
        counts = await b.wait_all_done("bench-three", w1_runs, within=900)
        w1_s = time.monotonic() - began
        stop.set()
        purged, purge_s = await purging if purging is not None else (0, 0.0)
        await b.stop_workers()
    result = {
        "bench": "purge",
        "variant": variant,
        "db": db,
        "backlog": backlog,
        "load_s": round(loaded_s, 1),
        "w1_runs": w1_runs,
        "w1_completed": counts["COMPLETED"],
        "w1_runs_per_s": round(w1_runs / w1_s, 1),
        "purged": purged,
        "purge_runs_per_s": round(purged / purge_s, 1) if purge_s else None,
    }
    print(json.dumps(result), flush=True)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--runs", type=int, default=100_000, help="finished runs to purge")
    parser.add_argument("--w1", type=int, default=2000, help="W1 runs (3 stages each)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results: list[dict[str, Any]] = []
    for db in dbs:
        for r in range(args.rounds):
            order = ("alone", "purging") if r % 2 == 0 else ("purging", "alone")
            for variant in order:
                results.append(await measure(db, variant, args.runs, args.w1))
    for db in dbs:
        alone = [x["w1_runs_per_s"] for x in results if x["db"] == db and x["variant"] == "alone"]
        with_purge = [x for x in results if x["db"] == db and x["variant"] == "purging"]
        during = [x["w1_runs_per_s"] for x in with_purge]
        rate = [x["purge_runs_per_s"] for x in with_purge if x["purge_runs_per_s"]]
        print(
            f"{db}: W1 runs/s alone {alone} -> {statistics.median(alone)}; while purging "
            f"{during} -> {statistics.median(during)} "
            f"({statistics.median(during) / statistics.median(alone):.2f}); purge runs/s "
            f"{rate}; purged {[x['purged'] for x in with_purge]} of {args.runs}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    asyncio.run(main())
