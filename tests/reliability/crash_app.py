"""A node-host worker process for the crash tests, which dies exactly where it is told to.

    python -m tests.reliability.crash_app --db=URL --worker-id=ID [--lease=S]

It serves the workflows below on a `NodeHost`, like `stagewise worker`, but its composition
root puts thin hooks around the SQL adapters. `$RELIABILITY_CRASH_PHASE` names the moment the
process kills itself with `os._exit(9)` (no cleanup, no drain: as good as SIGKILL):

    claim-run             right after the commit of a `run.claimPending` that started a run
                          (the run is RUNNING, its first stage started for this worker)
    claim-job             right after a dequeue that took jobs (leased to us, none started)
    stage                 inside stage `b`'s own code
    record-before-commit  in the transaction that records stage `b`'s result, before commit
    record-after-commit   right after that transaction committed, before anyone hears of it
    flush                 right after the event sink took `b`'s stage.completed event,
                          before the outbox marks it delivered

Every stage records each execution in the node tests' side table (`$NODE_TEST_SIDE_DB`), and
the event sink appends every event it receives to `$RELIABILITY_SINK_FILE`, so a test counts
executions and deliveries across deaths.

Workflows: `steps` (a -> b -> c, each adds one to `n`) and `poison` (one stage that kills
its worker every time it runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel

from stagewise import (
    Changeset,
    Event,
    JobMessage,
    KernelSettings,
    RetryPolicy,
    StageContext,
    StageStatus,
    WorkflowBuilder,
    WorkflowRegistry,
    create_kernel,
    define_stage,
)
from stagewise_node import HostScheduler, NodeHost, NodeHostSettings
from stagewise_sql import SqlBackend
from tests.integration.node.flows import record_end, record_start

PHASE_ENV = "RELIABILITY_CRASH_PHASE"
SINK_ENV = "RELIABILITY_SINK_FILE"
PHASES = (
    "claim-run",
    "claim-job",
    "stage",
    "record-before-commit",
    "record-after-commit",
    "flush",
)


def phase() -> str:
    return os.environ.get(PHASE_ENV, "")


def die(where: str) -> None:
    sys.stdout.write(f"dying at {where}\n")
    sys.stdout.flush()
    os._exit(9)


# --- workflows -----------------------------------------------------------------------------


class Step(BaseModel):
    n: int


async def step(ctx: StageContext) -> Step:
    row = await asyncio.to_thread(record_start, ctx)
    if ctx.stage_id == "b" and phase() == "stage":
        die("stage b")
    await asyncio.to_thread(record_end, row)
    return Step(n=ctx.input.n + 1)


async def boom(ctx: StageContext) -> None:
    await asyncio.to_thread(record_start, ctx)
    die("poison stage")  # every time, on every worker


MANY = RetryPolicy(max_attempts=10, initial_backoff=0.1, max_backoff=0.5)
"""The healthy stages: a worker killed by the poison stage takes their attempts with it."""

steps = (
    WorkflowBuilder("steps", input=Step, output=Step)
    .pipe(define_stage(id="a", input=Step, output=Step, execute=step, retry=MANY))
    .pipe(define_stage(id="b", input=Step, output=Step, execute=step, retry=MANY))
    .pipe(define_stage(id="c", input=Step, output=Step, execute=step, retry=MANY))
    .build()
)
poison = (
    WorkflowBuilder("poison")
    .pipe(define_stage(id="boom", execute=boom, retry=RetryPolicy(max_attempts=3)))
    .build()
)
registry = WorkflowRegistry([steps, poison])


# --- hooks around the adapters -------------------------------------------------------------


class _Watch:
    """What a transaction did, seen through its stores."""

    def __init__(self) -> None:
        self.claimed_runs = False
        self.recorded_b = False


class _RunsHook:
    def __init__(self, inner: Any, watch: _Watch) -> None:
        self._inner = inner
        self._watch = watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claim_pending(self, limit: int, **kwargs: Any) -> Any:
        claimed = await self._inner.claim_pending(limit, **kwargs)
        self._watch.claimed_runs = self._watch.claimed_runs or bool(claimed)
        return claimed


def _watch_apply(apply: Any, watch: _Watch) -> Any:
    async def watched(changes: Changeset) -> None:
        if any(s.stage_id == "b" and s.status is StageStatus.COMPLETED for s in changes.stages):
            watch.recorded_b = True
        await apply(changes)

    return watched


class DyingPersistence:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        watch = _Watch()
        async with self._inner.transaction() as tx:
            # The adapter's own transaction object, so its transport still joins it.
            tx.runs = _RunsHook(tx.runs, watch)
            tx.apply = _watch_apply(tx.apply, watch)
            yield tx
            if watch.recorded_b and phase() == "record-before-commit":
                die("the transaction recording stage b, before commit")
        if watch.recorded_b and phase() == "record-after-commit":
            die("the transaction recording stage b, after commit")
        if watch.claimed_runs and phase() == "claim-run":
            die("run.claimPending, after commit")


class DyingTransport:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def dequeue(self, **kwargs: Any) -> list[JobMessage]:
        jobs: list[JobMessage] = await self._inner.dequeue(**kwargs)
        if jobs and phase() == "claim-job":
            die(f"dequeue of {len(jobs)} job(s)")
        return jobs


class FileSink:
    """Appends every event it takes to a file (flushed to the OS before returning)."""

    def __init__(self, path: str) -> None:
        self._path = path

    async def publish(self, event: Event) -> None:
        line = json.dumps(
            {
                "event_id": event.event_id,
                "run_id": event.run_id,
                "seq": event.seq,
                "type": event.type,
                "stage_id": getattr(event, "stage_id", None),
                "pid": os.getpid(),
            }
        )
        with open(self._path, "a") as out:  # noqa: ASYNC230 (one short line)
            out.write(line + "\n")
        if phase() == "flush" and event.type == "stage.completed" and event.stage_id == "b":
            die("the sink took stage.completed of b")


def read_sink(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# --- the process ---------------------------------------------------------------------------


async def serve(db: str, worker_id: str, lease: float) -> None:
    backend = await SqlBackend.connect(db)
    scheduler = HostScheduler()
    transport = DyingTransport(backend.job_transport)
    kernel = create_kernel(
        persistence=DyingPersistence(backend.persistence),
        blob_store=backend.blob_store,
        job_transport=transport,
        event_sink=FileSink(os.environ[SINK_ENV]),
        scheduler=scheduler,
        clock=backend.clock,
        registry=registry,
        settings=KernelSettings(lease_seconds=lease, sync_workers=4),
    )
    poll = 0.2
    host = NodeHost(
        kernel=kernel,
        job_transport=transport,
        worker_id=worker_id,
        settings=NodeHostSettings(
            concurrency=4,
            job_poll_interval=poll,
            claim_interval=poll,
            suspended_poll_interval=1.0,
            reap_interval=lease / 2,
            flush_interval=poll,
            flush_batch_window=0.0,
            heartbeat_interval=lease / 4,
            drain_timeout=5.0,
        ),
        scheduler=scheduler,
    )
    try:
        await host.run()
    finally:
        await kernel.aclose()
        await backend.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--lease", type=float, default=1.5)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(args.db, args.worker_id, args.lease))


if __name__ == "__main__":
    main()
