"""The peer engine, DBOS Transact 3.4 (Python), on the workloads of `bench/run.py`.

    make bench-peer ARGS="--quick"            # smoke run: small counts
    make bench-peer ARGS="--repeat 3"         # W1-W3, three times each
    .tools/peer/bin/python bench/peer_dbos.py [--db-url URL] [--workloads W1,W2,W3]
        [--repeat N] [--w1-runs N] [--w2-runs N] [--w1-variants in-process,queue]
        [--w1-start-concurrency N] [--quick]

`make bench-peer` runs it in a virtualenv of its own (.tools/peer, dbos>=3.4,<3.5): dbos is
not a dependency of the project, and this script imports nothing of the project (only the
standard library and dbos). It measures DBOS in its fastest in-process configuration - the
application process starts the workflows and runs them, on its own event loop - against the
PostgreSQL server at --db-url (default postgresql://postgres@127.0.0.1:5432/postgres),
with DBOS's default durability and pool settings. Every workload run gets a fresh system
database, `stagewise_peer_<random>` (DBOS creates it at launch), dropped WITH (FORCE)
afterwards, also on failure.

Workloads (counts in --quick mode in brackets):
  W1  2,000 [100] workflows of 3 sequential steps (each returns input + 1), started one
      after another without waiting for any to finish (each start returns once its row is
      durable), then every result awaited. One start in flight is DBOS's fastest here: with
      8 (run.py's client creates 8 at a time) it ran 25-40 % slower, CPU-bound on this
      process's threads; --w1-start-concurrency N to compare.
      `in-process`: DBOS.start_workflow_async (runs on this event loop at once); `queue`:
      DBOS.enqueue_workflow_async on a queue polled every 10 ms (dequeued by DBOS's queue
      thread, run on its background event loop). wall_s is DBOS's own timestamps, first
      created_at to last completed_at (run.py's definition); observed_s is this process's
      clock, from the first start to the last result seen; runs/s and stages/s from wall_s.
      One warm-up workflow first (W1 and W3), not counted.
  W2  200 [20] of the same workflow, one after another, each started and its result
      awaited before the next (3 warm-up workflows first, not counted); p50/p95/p99/max of
      start -> result in milliseconds (time.perf_counter).
  W3  one workflow running 200 [50] steps concurrently (each returns input + i) and a step
      summing them; wall seconds from start to result.

One JSON line per result on stdout, shaped like run.py's (workload, variant, db, engine and
the figures); DBOS logs at warning level, to stderr. Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dbos import DBOS, DBOSConfig

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
APP_NAME = "stagewise-peer"
QUEUE_NAME = "peer-w1"
QUEUE_POLL_S = 0.01


@dataclass(frozen=True)
class Sizes:
    w1_runs: int
    w2_runs: int
    w3_fanout: int
    w1_start_concurrency: int = 1


FULL = Sizes(w1_runs=2000, w2_runs=200, w3_fanout=200)
QUICK = Sizes(w1_runs=100, w2_runs=20, w3_fanout=50)
WARM_UP = 3


# --- the workflows -------------------------------------------------------------------------
# Async workflows and steps: DBOS runs an async workflow as a task on the event loop that
# starts it (sync ones go through its thread pool), and checkpoints each step in its own
# transaction on a worker thread.


@DBOS.step()
async def add_one(x: int) -> int:
    return x + 1


@DBOS.workflow()
async def three_steps(n: int) -> int:
    a = await add_one(n)
    b = await add_one(a)
    return await add_one(b)


@DBOS.step()
async def add_index(x: int, i: int) -> int:
    return x + i


@DBOS.step()
async def total(values: list[int]) -> int:
    return sum(values)


@DBOS.workflow()
async def fan_out(n: int, width: int) -> int:
    # Concurrent steps: asyncio.gather over async steps, the way DBOS documents for
    # concurrency inside an async workflow. Each call takes its step id when it is made
    # (synchronously, in order), so the ids are deterministic however the steps interleave,
    # and recovery replays them; every step is checkpointed on its own as it finishes.
    # Child workflows would cost a workflow row, a start and a result wait per branch, so
    # steps are DBOS's cheaper and closer counterpart of a parallel group of stages.
    parts = await asyncio.gather(*(add_index(n, i) for i in range(width)))
    return await total(list(parts))


# --- DBOS on a fresh database --------------------------------------------------------------


def _with_database(server: str, name: str) -> str:
    parts = urlsplit(server)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def fresh_dbos(server: str) -> Iterator[str]:
    """DBOS launched on a new system database on `server`; destroyed, and the database
    dropped WITH (FORCE), on the way out whatever happened."""
    name = f"stagewise_peer_{uuid.uuid4().hex[:10]}"
    url = _with_database(server, name)
    config: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": url,
        "log_level": "WARNING",
    }
    try:
        DBOS(config=config)
        DBOS.launch()  # creates the database if missing, migrates it, starts its threads
        yield url
    finally:
        try:
            DBOS.destroy()
        finally:
            try:
                # DROP DATABASE IF EXISTS ... WITH (FORCE), through the "postgres" database.
                DBOS.reset_system_database(system_database_url=url)
            except Exception as exc:
                print(f"could not drop {name}: {exc}", file=sys.stderr)


async def _bounded(calls: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    """Await every call, `limit` at a time, results in order."""
    sem = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


def emit(result: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(result), flush=True)
    return result


def _head(workload: str, variant: str) -> dict[str, Any]:
    return {
        "workload": workload,
        "variant": variant,
        "db": "postgres",
        "engine": "dbos",
        "engine_version": importlib.metadata.version("dbos"),
    }


# --- workloads -----------------------------------------------------------------------------


async def _wait_for_queue_worker(name: str, within: float = 10.0) -> None:
    """DBOS's queue thread looks for new queues once a second; wait until it has started
    this queue's worker thread, so that second is not counted."""
    deadline = time.monotonic() + within
    while not any(t.name == f"queue-worker-{name}" for t in threading.enumerate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"DBOS did not start a worker for queue {name}")
        await asyncio.sleep(0.01)


async def _wait_queue_drained(name: str, within: float = 600.0) -> None:
    deadline = time.monotonic() + within
    while await DBOS.list_workflows_async(
        queue_name=name,
        status=["ENQUEUED", "PENDING"],
        limit=1,
        load_input=False,
        load_output=False,
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"queue {name} not drained within {within} s")
        await asyncio.sleep(QUEUE_POLL_S)


async def w1(server: str, sizes: Sizes, variant: str) -> dict[str, Any]:
    runs = sizes.w1_runs
    with fresh_dbos(server):
        warm = await DBOS.start_workflow_async(three_steps, -1)  # first-use costs, not counted
        await warm.get_result()
        if variant == "queue":
            await DBOS.register_queue_async(QUEUE_NAME, polling_interval_sec=QUEUE_POLL_S)
            await _wait_for_queue_worker(QUEUE_NAME)
        began = time.perf_counter()
        if variant == "queue":
            handles = await _bounded(
                [
                    lambda i=i: DBOS.enqueue_workflow_async(QUEUE_NAME, three_steps, i)
                    for i in range(runs)
                ],
                sizes.w1_start_concurrency,
            )
            await _wait_queue_drained(QUEUE_NAME)
        else:
            handles = await _bounded(
                [lambda i=i: DBOS.start_workflow_async(three_steps, i) for i in range(runs)],
                sizes.w1_start_concurrency,
            )
            await asyncio.gather(*(h.get_result() for h in handles))
        observed = time.perf_counter() - began
        ids = [h.get_workflow_id() for h in handles]
        statuses = await DBOS.list_workflows_async(workflow_ids=ids, load_input=False)
    outputs = {s.workflow_id: (s.status, s.output) for s in statuses}
    completed = sum(1 for i, wid in enumerate(ids) if outputs.get(wid) == ("SUCCESS", i + 3))
    failed = sum(1 for s in statuses if s.status not in ("SUCCESS", "ENQUEUED", "PENDING"))
    first = min(s.created_at or 0 for s in statuses)
    last = max(s.completed_at or 0 for s in statuses)
    wall = (last - first) / 1000
    return emit(
        {
            **_head("W1", variant),
            "runs": runs,
            "completed": completed,
            "failed": failed,
            "wall_s": round(wall, 3),
            "observed_s": round(observed, 3),
            "start_concurrency": sizes.w1_start_concurrency,
            "runs_per_s": round(completed / wall, 1),
            "stages_per_s": round(completed * 3 / wall, 1),
        }
    )


async def w2(server: str, sizes: Sizes) -> dict[str, Any]:
    runs = sizes.w2_runs
    figures: list[float] = []
    completed = 0
    with fresh_dbos(server):
        for i in range(WARM_UP + runs):
            began = time.perf_counter()
            handle = await DBOS.start_workflow_async(three_steps, i)
            result = await handle.get_result()
            elapsed_ms = (time.perf_counter() - began) * 1000
            if i >= WARM_UP:
                figures.append(elapsed_ms)
                completed += result == i + 3
    figures.sort()
    q = statistics.quantiles(figures, n=100, method="inclusive")
    return emit(
        {
            **_head("W2", "in-process"),
            "runs": runs,
            "completed": completed,
            "failed": runs - completed,
            "p50_ms": round(statistics.median(figures), 2),
            "p95_ms": round(q[94], 2),
            "p99_ms": round(q[98], 2),
            "max_ms": round(figures[-1], 2),
        }
    )


async def w3(server: str, sizes: Sizes) -> dict[str, Any]:
    width = sizes.w3_fanout
    with fresh_dbos(server):
        warm = await DBOS.start_workflow_async(three_steps, -1)  # first-use costs, not counted
        await warm.get_result()
        began = time.perf_counter()
        handle = await DBOS.start_workflow_async(fan_out, 0, width)
        result = await handle.get_result()
        wall = time.perf_counter() - began
    ok = result == sum(range(width))
    return emit(
        {
            **_head("W3", f"{width}-way, asyncio.gather of steps"),
            "runs": 1,
            "completed": int(ok),
            "failed": int(not ok),
            "wall_s": round(wall, 3),
        }
    )


# --- main ----------------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--db-url", default=DEFAULT_SERVER, help="the PostgreSQL server")
    parser.add_argument("--workloads", default="W1,W2,W3")
    parser.add_argument("--repeat", type=int, default=1, help="run each workload N times")
    parser.add_argument("--w1-runs", type=int, help="W1's workflow count (default 2000)")
    parser.add_argument("--w2-runs", type=int, help="W2's workflow count (default 200)")
    parser.add_argument(
        "--w1-variants", default="in-process,queue", help="W1 variants: in-process, queue"
    )
    parser.add_argument(
        "--w1-start-concurrency", type=int, default=1, help="W1 starts in flight at once"
    )
    parser.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.w1_runs:
        sizes = replace(sizes, w1_runs=args.w1_runs)
    if args.w2_runs:
        sizes = replace(sizes, w2_runs=args.w2_runs)
    sizes = replace(sizes, w1_start_concurrency=max(1, args.w1_start_concurrency))
    chosen = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    variants = [v.strip() for v in args.w1_variants.split(",") if v.strip()]
    if unknown := set(variants) - {"in-process", "queue"}:
        parser.error(f"unknown W1 variants: {', '.join(sorted(unknown))}")
    for _ in range(args.repeat):
        if "W1" in chosen:
            for variant in variants:
                await w1(args.db_url, sizes, variant)
        if "W2" in chosen:
            await w2(args.db_url, sizes)
        if "W3" in chosen:
            await w3(args.db_url, sizes)


if __name__ == "__main__":
    asyncio.run(main())
