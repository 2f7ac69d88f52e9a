"""Latency of a 3-stage run on an idle node host: from `run.create` to COMPLETED.

Every fallback polling interval of the host is set to 30 s, so a run that completes in
milliseconds was moved only by wake-ups: the kernel's Scheduler hints in-process, and
PostgreSQL NOTIFY across processes. The figure is the kernel's own `finished_at -
created_at` of each run (the watcher's polling does not count).

    uv run python bench/latency_idle_worker.py [--runs 30]

Scenarios:
  sqlite, in-process    the embedded default: host and client share a process
  postgres, in-process  the same on PostgreSQL
  postgres, 2 processes a `stagewise worker` process; this process creates the run and
                        starts it as `stagewise run` does (its jobs' NOTIFY wakes the worker)

PostgreSQL comes from $STAGEWISE_BENCH_DATABASE_URL (default
postgresql+asyncpg://postgres@127.0.0.1:5432/postgres); a scratch database is created on it
and dropped afterwards. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from _pg import pg_admin
from pydantic import BaseModel

from stagewise import (
    KernelSettings,
    RunClaimPending,
    RunCreate,
    StageContext,
    WorkflowBuilder,
    WorkflowRegistry,
    define_stage,
)

HERE = Path(__file__).resolve().parent
FALLBACK = 30.0
PG_DEFAULT = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


class Num(BaseModel):
    n: int


async def inc(ctx: StageContext) -> Num:
    return Num(n=ctx.input.n + 1)


three = (
    WorkflowBuilder("bench-three", input=Num, output=Num)
    .pipe(define_stage(id="a", input=Num, output=Num, execute=inc))
    .pipe(define_stage(id="b", input=Num, output=Num, execute=inc))
    .pipe(define_stage(id="c", input=Num, output=Num, execute=inc))
    .build()
)
workflows = [three]


def idle_settings() -> Any:
    from stagewise_node import NodeHostSettings

    return NodeHostSettings(
        concurrency=4,
        job_poll_interval=FALLBACK,
        claim_interval=FALLBACK,
        suspended_poll_interval=FALLBACK,
        reap_interval=FALLBACK,
        flush_interval=FALLBACK,
    )


async def measure(kernel: Any, persistence: Any, runs: int, *, claim: bool) -> list[float]:
    """Create runs one after another (each on an idle host); their create-to-done times."""
    figures = []
    for i in range(runs + 3):
        created = await kernel.dispatch(RunCreate(workflow_id="bench-three", input={"n": i}))
        if claim:
            await kernel.dispatch(RunClaimPending(limit=1))
        while True:
            async with persistence.transaction() as tx:
                run = await tx.runs.get(created.run_id)
            assert run is not None
            if run.status.is_terminal:
                break
            await asyncio.sleep(0.025)  # the figure is the kernel's; this only notices it
        assert run.status.value == "COMPLETED", run
        assert run.finished_at is not None
        if i >= 3:  # warm-up runs are not counted
            figures.append((run.finished_at - run.created_at).total_seconds() * 1000)
        await asyncio.sleep(0.05)  # let the host go idle again
    return figures


async def in_process(url: str, runs: int) -> list[float]:
    from stagewise_node import node_host
    from stagewise_sql import SqlBackend

    backend = await SqlBackend.connect(url)
    host = node_host(
        backend,
        WorkflowRegistry(workflows),
        worker_id="bench",
        settings=idle_settings(),
        kernel_settings=KernelSettings(),
    )
    await host.start()
    await asyncio.sleep(0.2)  # the first tick has run: the host is idle
    try:
        return await measure(host.kernel, backend.persistence, runs, claim=False)
    finally:
        await host.stop(drain_timeout=2)
        await host.kernel.aclose()
        await backend.close()


def start_worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "stagewise_node.cli", "worker"),
                "latency_idle_worker:workflows",
                f"--db={url}",
                f"--poll-interval={FALLBACK}",
                "--worker-id=bench-worker",
            ],
            cwd=HERE,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def text(log: Path) -> str:
    return log.read_text()


async def two_processes(url: str, runs: int) -> list[float]:
    from stagewise_sql import SqlBackend

    backend = await SqlBackend.connect(url)
    kernel = backend.kernel(WorkflowRegistry(workflows))
    try:
        async with idle_worker(url):
            return await measure(kernel, backend.persistence, runs, claim=True)
    finally:
        await kernel.aclose()
        await backend.close()


@contextlib.asynccontextmanager
async def idle_worker(url: str) -> AsyncIterator[None]:
    """A `stagewise worker` process on `url`, started and idle (its first tick and LISTEN
    done); terminated on the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "worker.log"
        worker = start_worker(url, log)
        try:
            deadline = time.monotonic() + 60
            while "worker bench-worker started" not in text(log):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker did not start:\n{text(log)}")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            yield
        finally:
            worker.terminate()
            worker.wait(30)


def report(name: str, figures: list[float]) -> None:
    figures = sorted(figures)
    p = (
        statistics.quantiles(figures, n=100, method="inclusive")
        if len(figures) > 1
        else figures * 99
    )
    print(
        f"{name:<24} runs={len(figures):<4} p50={statistics.median(figures):7.1f} ms  "
        f"p90={p[89]:7.1f} ms  p99={p[98]:7.1f} ms  max={figures[-1]:7.1f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    print(f"3-stage run, create -> COMPLETED, idle worker, fallback intervals {FALLBACK:g}s")

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        report("sqlite, in-process", await in_process(url, args.runs))

    server = os.environ.get("STAGEWISE_BENCH_DATABASE_URL", PG_DEFAULT)
    name = f"stagewise_bench_{uuid.uuid4().hex[:8]}"
    try:
        await pg_admin(server, f'CREATE DATABASE "{name}"')
    except Exception as exc:
        print(f"postgres: skipped ({type(exc).__name__}: {exc})")
        return
    from sqlalchemy import make_url

    url = make_url(server).set(drivername="postgresql+asyncpg", database=name)
    pg_url = url.render_as_string(hide_password=False)
    try:
        report("postgres, in-process", await in_process(pg_url, args.runs))
        report("postgres, 2 processes", await two_processes(pg_url, args.runs))
    finally:
        await pg_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    asyncio.run(main())
