"""Stream latency: a stage writes items to a stream; how soon after its write begins does
a reader see each one?

    uv run python bench/stream_latency.py [--db sqlite|postgres|both]

One run of bench-stream: its stage writes 200 items (`BENCH_STREAM_ITEMS`), 10 ms apart,
each the wall-clock time just before `ctx.write_stream` (so a figure is the write's commit
plus the time until the reader has it). This process follows the stream with
`Kernel.read_stream` (its poll is 30 s, so only a commit of its own or the change feed's
hint wakes it). Placements:

  in-process   a node host in this process runs the stage (the reader is woken by the
               writing commit itself)
  2 processes  a `stagewise worker` process runs it (the reader is woken by the change
               feed: NOTIFY on PostgreSQL, the file watch on SQLite)

Prints one JSON line per measurement and a summary on stderr; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import bench

from stagewise import RunClaimPending, RunCreate


async def measure(db: str, placement: str) -> dict[str, Any]:
    async with bench(db, 30.0) as b:
        if placement == "in-process":
            await b.start_local_host("streamer", concurrency=4)
        else:
            await b.start_worker("streamer", concurrency=4)
        await asyncio.sleep(0.5)  # the host's first tick is done: it is idle
        created = await b.kernel.dispatch(RunCreate(workflow_id="bench-stream"))
        await b.kernel.dispatch(RunClaimPending(limit=1))
        figures = []
        async for item in b.kernel.read_stream(created.run_id, "ticks", poll_interval=30):
            figures.append((time.time() - float(item.value)) * 1000)
        await b.stop_workers()
    figures = figures[3:]  # warm-up items are not counted
    cuts = statistics.quantiles(figures, n=100, method="inclusive")
    result = {
        "bench": "stream-latency",
        "db": db,
        "placement": placement,
        "items": len(figures),
        "p50_ms": round(statistics.median(figures), 1),
        "p99_ms": round(cuts[98], 1),
        "max_ms": round(max(figures), 1),
    }
    print(json.dumps(result), flush=True)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args()
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results = [
        await measure(db, placement) for db in dbs for placement in ("in-process", "2 processes")
    ]
    for r in results:
        print(
            f"{r['db']}, {r['placement']}: write -> reader p50 {r['p50_ms']} ms, "
            f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms ({r['items']} items)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    asyncio.run(main())
