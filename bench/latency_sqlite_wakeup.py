"""Cross-process wake-up on SQLite: how long an idle `stagewise worker` process takes to
start a stage that another process made due.

SQLite has no NOTIFY: a worker watches the file (`PRAGMA data_version`, every 5 ms) and
looks for new work only when another connection committed. The worker here has every
fallback polling interval at 30 s, so anything well below that was a wake-up.

    uv run python bench/latency_sqlite_wakeup.py [--runs 30]

Scenarios, each one run after another on the idle worker:
  stagewise run   this process creates a run and starts it, as `stagewise run` does (the
                  worker hears of the pending run or of its first job)
  rerun (jobs)    this process reruns a finished run from its first stage, as `stagewise
                  runs rerun` does: only a job is enqueued, into an emptied queue

The figure is the worker's `started_at` of the first stage minus this process's clock just
before it committed (one machine, one clock). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from latency_idle_worker import FALLBACK, idle_worker, report, workflows

from stagewise import RunClaimPending, RunCreate, RunRerunFrom, WorkflowRegistry


async def first_start(persistence: Any, run_id: str, after: datetime) -> float:
    """Milliseconds from `after` until stage `a` of the run started (after `after`)."""
    deadline = time.monotonic() + 2 * FALLBACK
    while time.monotonic() < deadline:
        async with persistence.transaction() as tx:
            stages = {s.stage_id: s for s in await tx.stages.for_run(run_id)}
        started = stages["a"].started_at if "a" in stages else None
        if started is not None and started >= after:
            return (started - after).total_seconds() * 1000
        await asyncio.sleep(0.002)  # the figure is the worker's; this only notices it
    raise RuntimeError(f"stage a of {run_id} did not start within {2 * FALLBACK:g}s")


async def finished(persistence: Any, run_id: str) -> None:
    while True:
        async with persistence.transaction() as tx:
            run = await tx.runs.get(run_id)
        assert run is not None
        if run.status.is_terminal:
            assert run.status.value == "COMPLETED", run
            return
        await asyncio.sleep(0.01)


async def measure(
    runs: int, clock: Any, persistence: Any, make_due: Callable[[int], Awaitable[str]]
) -> list[float]:
    figures = []
    for i in range(runs + 2):
        await asyncio.sleep(0.1)  # the worker is idle again, its queue empty
        before = clock.now()
        run_id = await make_due(i)
        figure = await first_start(persistence, run_id, before)
        await finished(persistence, run_id)
        if i >= 2:  # warm-up
            figures.append(figure)
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    from stagewise_sql import SqlBackend

    print(f"SQLite, idle worker process, fallback intervals {FALLBACK:g}s: commit -> stage start")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        backend = await SqlBackend.connect(url)
        kernel = backend.kernel(WorkflowRegistry(workflows))
        persistence, clock = backend.persistence, backend.clock

        async def run_command(i: int) -> str:
            created = await kernel.dispatch(RunCreate(workflow_id="bench-three", input={"n": i}))
            await kernel.dispatch(RunClaimPending(limit=1))
            return created.run_id

        try:
            async with idle_worker(url):
                first = await run_command(0)
                await finished(persistence, first)

                async def rerun(i: int) -> str:
                    await kernel.dispatch(RunRerunFrom(run_id=first, stage_id="a"))
                    return first

                report("stagewise run", await measure(args.runs, clock, persistence, run_command))
                report("rerun (jobs)", await measure(args.runs, clock, persistence, rerun))
        finally:
            await kernel.aclose()
            await backend.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    asyncio.run(main())
