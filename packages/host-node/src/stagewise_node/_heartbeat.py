"""Lease heartbeats for the attempts running in a host.

Every `interval` seconds the host sends `job.heartbeat` for each job in flight. The kernel
pushes the stage's lease (and the delivery's) out by another `lease_seconds`, writes the
logs and progress the attempt buffered, and says whether the run was cancelled; when it
was, the kernel has already set the attempt's cancellation token, which interrupts an async
stage at its next await and tells a sync stage through `ctx.cancelled`.

Heartbeats run on the event loop, never behind a stage: sync stages run on the kernel's
thread pool, so a stage that blocks for minutes still has its lease extended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from stagewise import Clock, JobHeartbeat, JobMessage, Kernel, LeaseLost
from stagewise_node._scheduler import wait_event
from stagewise_node._stats import Counters

logger = logging.getLogger("stagewise.node")

PARALLEL_BEATS = 8
"""Heartbeats in flight at once (each is one short transaction)."""


def job_fields(job: JobMessage, worker_id: str) -> dict[str, object]:
    """The structured logging fields of a job."""
    return {
        "run_id": job.run_id,
        "workflow_id": job.workflow_id,
        "stage_id": job.stage_id,
        "attempt": job.attempt,
        "job_id": job.job_id,
        "worker_id": worker_id,
    }


class Heartbeater:
    def __init__(self, kernel: Kernel, clock: Clock, interval: float, worker_id: str) -> None:
        self._kernel = kernel
        self._clock = clock
        self.interval = interval
        self._worker_id = worker_id
        self._cancelled: set[str] = set()

    async def loop(
        self, jobs: Callable[[], Iterable[JobMessage]], stop: asyncio.Event, counters: Counters
    ) -> None:
        """Beat for `jobs()` every interval until `stop` is set."""
        while not await wait_event(stop, self._clock, self.interval):
            await self.beat(list(jobs()), counters)

    async def beat(self, jobs: list[JobMessage], counters: Counters) -> None:
        """One heartbeat for each job, a few at a time; failures are logged, not raised."""
        gate = asyncio.Semaphore(PARALLEL_BEATS)

        async def one(job: JobMessage) -> None:
            async with gate:
                await self._beat(job, counters)

        await asyncio.gather(*(one(job) for job in jobs))
        live = {job.job_id for job in jobs}
        self._cancelled &= live

    async def _beat(self, job: JobMessage, counters: Counters) -> None:
        fields = job_fields(job, self._worker_id)
        try:
            result = await self._kernel.dispatch(JobHeartbeat(job=job, worker_id=self._worker_id))
        except LeaseLost as exc:
            # Not started yet (the start transaction is still on its way), or already
            # finished: either way there is no lease of ours to extend.
            logger.debug("heartbeat skipped: %s", exc, extra=fields)
            return
        except Exception as exc:
            counters.error("heartbeat", exc)
            logger.warning(
                "heartbeat failed for stage %s of run %s (attempt %d): %s: %s",
                job.stage_id,
                job.run_id,
                job.attempt,
                type(exc).__name__,
                exc,
                extra=fields,
            )
            return
        counters.heartbeats += 1
        if result.cancelled and job.job_id not in self._cancelled:
            self._cancelled.add(job.job_id)
            logger.info(
                "run %s was cancelled: cancelling stage %s (attempt %d)",
                job.run_id,
                job.stage_id,
                job.attempt,
                extra=fields,
            )
