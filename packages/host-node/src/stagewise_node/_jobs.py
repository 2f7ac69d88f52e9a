"""The job side of a host: dequeue into free slots, execute, and listen for enqueues.

The loop takes up to the free slots' worth of jobs and runs each one as a task
(`job.execute`). With every slot busy it waits for one to free; with nothing to do it sleeps
on its alarm, which goes off when the kernel hints that a job is due (enqueued now, or a
retry's backoff ends), when a NOTIFY says another process enqueued, or after the fallback
poll interval. The kernel fences every delivery, so a stale or duplicate one costs a
`LeaseLost` and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from stagewise import (
    Clock,
    JobExecute,
    JobMessage,
    JobRelease,
    JobTransport,
    Kernel,
    LeaseLost,
    LeaseReapStale,
    RunCreate,
    RunCreateResult,
)
from stagewise_node._heartbeat import job_fields
from stagewise_node._scheduler import Alarm, listen, wait_event
from stagewise_node._settings import NodeHostSettings
from stagewise_node._stats import Counters

logger = logging.getLogger("stagewise.node")


@runtime_checkable
class JobWakeups(Protocol):
    """A transport that can say when jobs were enqueued (outside the kernel's port), like
    stagewise_sql's, which hears PostgreSQL NOTIFY."""

    def wait_for_jobs(self, timeout: float) -> Awaitable[bool]: ...


@runtime_checkable
class RunWakeups(Protocol):
    """A transport that can say when another process created a run (stagewise_sql's hears
    PostgreSQL NOTIFY on run insert), so the host claims it at once."""

    def wait_for_runs(self, timeout: float) -> Awaitable[bool]: ...


MAX_BACKOFF = 30.0
"""The longest wait between two tries while the database is unreachable (unless the
polling interval itself is longer)."""


def backoff(interval: float, failures: int) -> float:
    """Seconds to wait after `failures` failures in a row: the interval, doubled each time,
    capped at `MAX_BACKOFF` (or the interval, if that is longer)."""
    return min(interval * 2.0 ** (failures - 1), max(interval, MAX_BACKOFF))


class JobRunner:
    """Job slots of one host."""

    def __init__(
        self,
        kernel: Kernel,
        transport: JobTransport,
        clock: Clock,
        settings: NodeHostSettings,
        worker_id: str,
        counters: Counters,
    ) -> None:
        self._kernel = kernel
        self._transport = transport
        self._clock = clock
        self._settings = settings
        self._worker_id = worker_id
        self._counters = counters
        self.alarm = Alarm(clock)
        self.running: dict[asyncio.Task[None], JobMessage] = {}
        self._since: dict[asyncio.Task[None], datetime] = {}
        self._slot = asyncio.Event()
        self._stopping = asyncio.Event()
        self._reserved = 0
        """Slots held for submissions whose creating transaction has not committed yet."""

    def running_for(self, seconds: float) -> list[JobMessage]:
        """The jobs in flight for at least `seconds` (on the host's clock).

        A younger job needs no heartbeat yet: its attempt took its lease when it started,
        after the job was taken, so the lease is at least as fresh as that.
        """
        before = self._clock.now() - timedelta(seconds=seconds)
        return [job for task, job in self.running.items() if self._since[task] <= before]

    def free(self) -> int:
        """Job slots free now (none while stopping: a draining host starts nothing)."""
        if self._stopping.is_set():
            return 0
        return max(0, self._settings.concurrency - len(self.running) - self._reserved)

    def adopt(self, jobs: Sequence[JobMessage]) -> None:
        """Execute jobs whose stages were already started for this worker (eager dispatch
        at claim or creation), each in a slot of its own."""
        for job in jobs:
            self._spawn(job)

    async def submit(self, command: RunCreate, *, serving: bool) -> RunCreateResult:
        """Create a run; while `serving` with a free slot (and no worker id set by the
        caller), start its first stage for this worker in the creating transaction and run
        it in that slot. The slot is held until the creation commits, so concurrent
        submissions never take more slots than are free."""
        if not serving or command.worker_id is not None or self.free() <= 0:
            return await self._kernel.dispatch(command)
        self._reserved += 1
        try:
            result = await self._kernel.dispatch(
                command.model_copy(update={"worker_id": self._worker_id})
            )
            self.adopt(result.started_jobs)
        finally:
            self._reserved -= 1
            self._slot.set()  # the job loop may have waited for this slot
        return result

    def wake(self) -> None:
        """Look for jobs now (and stop waiting for a slot, when stopping)."""
        self.alarm.ring()
        self._slot.set()

    async def loop(self, stopping: asyncio.Event) -> None:
        self._stopping = stopping
        lease = self._kernel.settings.lease_seconds
        failures = 0
        while not stopping.is_set():
            self._slot.clear()
            free = self._settings.concurrency - len(self.running) - self._reserved
            if free <= 0:
                await wait_event(self._slot, self._clock, self._settings.job_poll_interval)
                continue
            self.alarm.take()
            try:
                jobs = await self._transport.dequeue(
                    worker_id=self._worker_id,
                    limit=free,
                    lease_for=lease,
                    workflows=self._kernel.registry.known(),  # others: for who has them
                )
            except Exception as exc:
                failures += 1
                self._counters.error("dequeue", exc)
                # The database (or queue) is down: back off instead of hammering it.
                delay = backoff(self._settings.job_poll_interval, failures)
                logger.warning(
                    "dequeue failed (%d in a row), retrying in %.1fs: %s: %s",
                    failures,
                    delay,
                    type(exc).__name__,
                    exc,
                    exc_info=failures == 1,
                    extra={"worker_id": self._worker_id},
                )
                await self.alarm.wait(delay)
                continue
            if failures:
                logger.info(
                    "dequeue works again after %d failure(s)",
                    failures,
                    extra={"worker_id": self._worker_id},
                )
            failures = 0
            for job in jobs:
                self._spawn(job)
            if len(jobs) < free:
                await self.alarm.wait(self._settings.job_poll_interval)

    def _spawn(self, job: JobMessage) -> None:
        task = asyncio.create_task(self._execute(job), name=f"stagewise-job-{job.job_id}")
        self.running[task] = job
        self._since[task] = self._clock.now()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)
        self._since.pop(task, None)
        self._slot.set()

    async def _execute(self, job: JobMessage) -> None:
        """Execute the job, then each stage the kernel hands this worker on the way
        (eager dispatch: the next stage of the run, started in the same transaction that
        recorded this one), in this same slot."""
        task = asyncio.current_task()
        next_job: JobMessage | None = job
        while next_job is not None:
            if task is not None and next_job is not job:
                self.running[task] = next_job
                self._since[task] = self._clock.now()
                if self._stopping.is_set():  # draining: start nothing new, give it back
                    await self.give_back(next_job)
                    return
            next_job = await self._execute_one(next_job)

    async def give_back(self, job: JobMessage) -> None:
        """Release an attempt this worker holds but will not finish: another worker takes
        the stage at once, under the next attempt number, which does not count against the
        stage's retry policy."""
        try:
            await self._kernel.dispatch(JobRelease(job=job, worker_id=self._worker_id))
        except Exception as exc:  # reaping this worker's leases (or their expiry) frees it
            logger.warning(
                "could not give back %s: %s",
                job.stage_id,
                exc,
                extra=job_fields(job, self._worker_id),
            )

    async def release_own(self, when: str) -> None:
        """Retry every attempt this worker id holds and give back its deliveries (on start,
        after a crash; on stop, after the drain)."""
        batch = self._settings.reap_batch
        while True:
            result = await self._kernel.dispatch(
                LeaseReapStale(limit=batch, worker_id=self._worker_id, stopping=when == "on stop")
            )
            if result.retried or result.failed or result.released_jobs:
                logger.info(
                    "released this worker's leases %s: %d attempt(s) retried, %d failed, "
                    "%d delivery(ies) given back",
                    when,
                    result.retried,
                    result.failed,
                    result.released_jobs,
                    extra={"worker_id": self._worker_id},
                )
            if result.retried + result.failed < batch:
                return

    async def _execute_one(self, job: JobMessage) -> JobMessage | None:
        fields = job_fields(job, self._worker_id)
        counters = self._counters
        began = time.monotonic()
        try:
            result = await self._kernel.dispatch(
                JobExecute(job=job, worker_id=self._worker_id, chain=True)
            )
        except LeaseLost as exc:
            counters.outcome("lease_lost")
            logger.info("delivery refused: %s", exc, extra=fields)
            return None
        except asyncio.CancelledError:
            logger.warning(
                "stage %s of run %s (attempt %d) abandoned at the drain deadline",
                job.stage_id,
                job.run_id,
                job.attempt,
                extra=fields,
            )
            raise
        except Exception as exc:
            counters.jobs_processed += 1
            counters.jobs_failed += 1
            counters.error(f"job {job.job_id}", exc)
            logger.error(
                "could not execute stage %s of run %s (attempt %d): %s: %s",
                job.stage_id,
                job.run_id,
                job.attempt,
                type(exc).__name__,
                exc,
                exc_info=True,
                extra=fields,
            )
            return None
        elapsed = time.monotonic() - began
        if result.deferred:  # delivered before its attempt was due: given back, ran nothing
            counters.jobs_processed += 1
            logger.debug("job delivered early, due in %.2fs", result.retry_after, extra=fields)
            return None
        counters.outcome(result.outcome)
        fields = {**fields, "outcome": result.outcome, "duration": round(elapsed, 4)}
        what = f"stage {job.stage_id} of run {job.run_id} (attempt {job.attempt})"
        if result.outcome == "retry":
            logger.warning(
                "%s failed, retrying in %.1fs: %s",
                what,
                result.retry_after or 0,
                result.error,
                extra=fields,
            )
        elif result.outcome == "failed":
            logger.error("%s failed: %s", what, result.error, extra=fields)
        elif result.replayed:
            logger.info("%s had already completed: duplicate delivery dropped", what, extra=fields)
        else:
            logger.info("%s %s in %.3fs", what, result.outcome, elapsed, extra=fields)
        return result.next_job

    async def listen(self, transport: JobWakeups, stopping: asyncio.Event) -> None:
        """Ring the alarm whenever the transport says jobs were enqueued."""
        await listen(
            transport.wait_for_jobs,
            self.alarm.ring,
            what="job",
            stopping=stopping,
            clock=self._clock,
            renew_every=self._settings.listen_timeout,
            worker_id=self._worker_id,
        )
