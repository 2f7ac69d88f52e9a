"""The stateless host: one job, a few jobs, or one maintenance tick per invocation.

Theory of operation
-------------------
A serverless platform runs code only while an invocation lasts, runs many invocations at
once in many containers, and may freeze or kill a container between two of them. So the
host keeps nothing between calls that matters: the stage rows are the truth, the kernel
fences every delivery against them, and every call finishes everything it starts before it
returns (even a running job's heartbeat is a task scoped to that job). Building a host is
free; it only holds the kernel and transport the application built once per container.

A queue needs one answer per delivery: is it done with, or must it come back? That is
`JobResult.redeliver`. Everything the kernel recorded (a completion, a suspension, a stage
that failed for good, a failed attempt whose retry it enqueued as a new job) and everything
it refused on purpose (a duplicate, a stale lease, a cancelled run) is done with. Only a
delivery that was not processed — a transient error before anything committed, too little
time left, an early delivery, a workflow this deployment does not know — comes back, and
coming back is harmless because the kernel fences it again.

Deadlines are datetimes on the host's clock. Nothing starts that cannot finish before the
deadline less `safety_margin`: a job needs its stage's `timeout`, or `job_time_budget`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from stagewise import (
    Clock,
    InvalidInputError,
    JobExecute,
    JobExecuteResult,
    JobHeartbeat,
    JobMessage,
    JobTransport,
    Kernel,
    LeaseLost,
    LeaseReapStale,
    OutboxFlush,
    RunClaimPending,
    StageNotFoundError,
    StagePollSuspended,
    WorkflowNotFoundError,
)
from stagewise_serverless._messages import MalformedJobMessageError, parse_job_message
from stagewise_serverless._results import JobCounts, JobResult, MaintenanceCounts
from stagewise_serverless._settings import ServerlessSettings

logger = logging.getLogger("stagewise.serverless")


class ServerlessHost:
    """Runs jobs and maintenance ticks for a kernel, one invocation at a time.

    Example:
        host = ServerlessHost(kernel=kernel, job_transport=transport, worker_id="fn-1")
        result = await host.handle_job(body)      # a message the platform dequeued
        await host.run_maintenance_tick()          # from a schedule

    `job_transport` must be the transport the kernel was built with. `clock` (for the
    invocation's deadline and the retry times it gives the transport) defaults to the
    kernel's: on the SQL backends the database's, as the transport's availability is.
    """

    def __init__(
        self,
        *,
        kernel: Kernel,
        job_transport: JobTransport,
        worker_id: str,
        settings: ServerlessSettings | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not worker_id or len(worker_id) > 200:
            raise ValueError("worker_id must be 1-200 characters")
        self._kernel = kernel
        self._transport = job_transport
        self._worker_id = worker_id
        self._settings = settings or ServerlessSettings()
        self._clock: Clock = clock or kernel.clock

    @property
    def kernel(self) -> Kernel:
        return self._kernel

    @property
    def job_transport(self) -> JobTransport:
        return self._transport

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @property
    def settings(self) -> ServerlessSettings:
        return self._settings

    @property
    def clock(self) -> Clock:
        return self._clock

    # --- one job --------------------------------------------------------------------------

    async def handle_job(self, message: object, *, deadline: datetime | None = None) -> JobResult:
        """Execute one job message that the platform already took from a queue: a queue
        body (JSON text or bytes), its decoded dict, or a `JobMessage`.

        On completion the run is advanced in the same invocation: the next group's jobs are
        enqueued before this returns. Never raises for anything about the message or the
        outcome; see `JobResult.redeliver` for what to tell the queue.
        """
        try:
            job = parse_job_message(message, received_at=self._clock.now())
        except MalformedJobMessageError as exc:
            logger.error("dropped a malformed job message: %s", exc.message)
            return JobResult(outcome="failed", error=exc.message)
        return await self._execute(job, deadline)

    async def _execute(self, job: JobMessage, deadline: datetime | None) -> JobResult:
        ids: dict[str, Any] = {
            "job_id": job.job_id,
            "run_id": job.run_id,
            "stage_id": job.stage_id,
            "attempt": job.attempt,
        }
        try:
            need = self._need(job)
        except (WorkflowNotFoundError, StageNotFoundError) as exc:
            # Not this message's fault alone: a deployment that is behind may not know a
            # workflow a newer one enqueued. Give it back; a queue's dead-letter policy (or an
            # operator) decides when to stop.
            logger.error("job %s names %s", job.job_id, exc.message)
            return JobResult(outcome="failed", error=exc.message, redeliver=True, **ids)
        left = self._time_left(deadline)
        if left is not None and left < need:
            logger.warning(
                "job %s not started: it may need %gs and %gs are left before the deadline "
                "(less the safety margin); is the function's timeout long enough?",
                job.job_id,
                need,
                max(left, 0),
            )
            return JobResult(
                outcome="retry",
                error=f"not started: it may need {need:g}s and {max(left, 0):g}s are left",
                retry_after=0.0,
                redeliver=True,
                **ids,
            )
        try:
            command = JobExecute(job=job, worker_id=self._worker_id)
        except ValueError as exc:  # pydantic refused the message: it can never run
            return JobResult(outcome="failed", error=f"invalid job message: {exc}", **ids)
        try:
            async with self._heartbeat(job):
                result = await self._kernel.dispatch(command)
        except LeaseLost as exc:
            return JobResult(outcome="lease_lost", error=exc.message, **ids)
        except InvalidInputError as exc:
            logger.error("job %s was refused: %s", job.job_id, exc.message)
            return JobResult(outcome="failed", error=exc.message, **ids)
        except Exception as exc:
            logger.exception("job %s could not be processed; it will come back", job.job_id)
            return JobResult(
                outcome="retry",
                error=f"{type(exc).__name__}: {exc}",
                retry_after=self._settings.redeliver_after,
                redeliver=True,
                **ids,
            )
        return JobResult(
            outcome=result.outcome,
            error=result.error,
            retry_after=result.retry_after,
            redeliver=_deferred(result),
            replayed=result.replayed,
            **ids,
        )

    def _need(self, job: JobMessage) -> float:
        """Seconds a job may need. Raises the kernel's not-found errors for unknown ids."""
        workflow = self._kernel.registry.get_workflow(job.workflow_id, job.workflow_version)
        stage = workflow.stage(job.stage_id)
        return stage.timeout if stage.timeout is not None else self._settings.job_time_budget

    def _time_left(self, deadline: datetime | None) -> float | None:
        """Seconds left before the deadline, less the safety margin (None: no deadline)."""
        if deadline is None:
            return None
        left = (deadline - self._clock.now()).total_seconds()
        return left - self._settings.safety_margin

    @contextlib.asynccontextmanager
    async def _heartbeat(self, job: JobMessage) -> AsyncIterator[None]:
        if not self._settings.heartbeats:
            yield
            return
        beat = asyncio.ensure_future(self._beat(job))
        try:
            yield
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)

    async def _beat(self, job: JobMessage) -> None:
        interval = self._settings.heartbeat_interval or self._kernel.settings.lease_seconds / 3
        command = JobHeartbeat(job=job, worker_id=self._worker_id)
        while True:
            await self._clock.sleep(interval)
            try:
                beat = await self._kernel.dispatch(command)
            except LeaseLost:
                return  # the attempt no longer holds the stage; its finish will be refused
            except Exception:
                logger.warning("heartbeat of job %s failed", job.job_id, exc_info=True)
                continue
            if beat.cancelled:
                return  # the kernel has told the running code

    # --- jobs from the transport ----------------------------------------------------------

    async def process_available_jobs(
        self, max_jobs: int = 1, deadline: datetime | None = None
    ) -> JobCounts:
        """Take up to `max_jobs` jobs from the job transport and execute them, at most
        `settings.concurrency` at a time, starting none that would not finish before
        `deadline`. Jobs a completion enqueues may be taken in the same call.

        Raises:
            Exception: whatever the transport's `dequeue` raises, once the jobs already
                started have finished.
        """
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        tally: Counter[str] = Counter()
        stopped = False
        failure: Exception | None = None
        started = 0
        lease = self._kernel.settings.lease_seconds
        running: set[asyncio.Task[JobResult]] = set()
        try:
            while True:
                drained = False
                while (
                    started < max_jobs
                    and len(running) < self._settings.concurrency
                    and not (stopped or drained or failure)
                ):
                    left = self._time_left(deadline)
                    if left is not None and left <= 0:
                        stopped = True
                        break
                    try:
                        jobs = await self._transport.dequeue(
                            worker_id=self._worker_id,
                            limit=1,
                            lease_for=lease,
                            workflows=self._kernel.registry.known(),
                        )
                    except Exception as exc:
                        logger.exception("could not take jobs from the transport")
                        failure = exc
                        break
                    if not jobs:
                        drained = True
                        break
                    job = jobs[0]
                    if not self._fits(job, deadline):
                        await self._give_back(job, 0.0)
                        stopped = True
                        break
                    running.add(asyncio.ensure_future(self._run_pulled(job)))
                    started += 1
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    running.discard(task)
                    tally[_bucket(task.result())] += 1
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        if failure is not None:
            raise failure
        return JobCounts(
            processed=sum(tally.values()),
            succeeded=tally["succeeded"],
            failed=tally["failed"],
            retried=tally["retried"],
            skipped=tally["skipped"],
            stopped_at_deadline=stopped,
        )

    def _fits(self, job: JobMessage, deadline: datetime | None) -> bool:
        left = self._time_left(deadline)
        if left is None:
            return True
        try:
            need = self._need(job)
        except (WorkflowNotFoundError, StageNotFoundError):
            need = 0.0  # it fails at once
        return left >= need

    async def _run_pulled(self, job: JobMessage) -> JobResult:
        result = await self._execute(job, None)
        if result.redeliver:
            delay = result.retry_after
            await self._give_back(job, self._settings.redeliver_after if delay is None else delay)
        return result

    async def _give_back(self, job: JobMessage, delay: float) -> None:
        """Make a job we took but did not process deliverable again. Best effort: if this
        fails too, the transport's lease runs out and maintenance releases it."""
        try:
            await self._transport.retry_at(job.job_id, self._clock.now() + timedelta(seconds=delay))
        except Exception:
            logger.warning("could not give job %s back to the transport", job.job_id, exc_info=True)

    # --- maintenance ----------------------------------------------------------------------

    async def run_maintenance_tick(self, deadline: datetime | None = None) -> MaintenanceCounts:
        """One bounded pass of every maintenance command: start pending runs, check due
        suspended stages, reap expired leases (and fail runs past their deadline, repeat
        lost deliveries, and purge one batch of runs past `KernelSettings.retention`),
        flush the outbox.

        Each step is isolated: one that raises is logged and named in `errors`, and the
        others still run. Steps that no longer fit before `deadline` are named in `skipped`.
        """
        s = self._settings
        wid = self._worker_id
        counts: dict[str, int] = Counter()
        errors: list[str] = []
        skipped: list[str] = []
        next_wake_at: datetime | None = None
        steps = (
            RunClaimPending(limit=s.claim_limit),
            StagePollSuspended(limit=s.poll_limit, poller_id=wid),
            LeaseReapStale(limit=s.reap_limit),
            OutboxFlush(limit=s.flush_limit, flusher_id=wid),
        )
        for command in steps:
            left = self._time_left(deadline)
            if left is not None and left <= 0:
                skipped.append(command.type)
                continue
            try:
                if isinstance(command, RunClaimPending):
                    claimed = await self._kernel.dispatch(command)
                    counts["claimed"] += len(claimed.run_ids)
                elif isinstance(command, StagePollSuspended):
                    polled = await self._kernel.dispatch(command)
                    counts["suspended_checked"] += polled.checked
                    counts["resumed"] += polled.resumed
                    next_wake_at = polled.next_due_at
                elif isinstance(command, LeaseReapStale):
                    reaped = await self._kernel.dispatch(command)
                    counts["leases_released"] += reaped.retried + reaped.failed
                    counts["requeued"] += reaped.released_jobs + reaped.requeued
                    counts["purged"] += reaped.purged
                    counts["timed_out"] += reaped.timed_out
                else:
                    flushed = await self._kernel.dispatch(command)
                    counts["events_flushed"] += flushed.delivered
            except Exception as exc:
                logger.exception("maintenance step %s failed", command.type)
                errors.append(f"{command.type}: {type(exc).__name__}: {exc}")
        return MaintenanceCounts(
            **counts, next_wake_at=next_wake_at, errors=tuple(errors), skipped=tuple(skipped)
        )


def _deferred(result: JobExecuteResult) -> bool:
    """The kernel's answer to a delivery that came before its attempt was due: `retry`
    with no error (a failed attempt always carries one). The kernel has asked the transport
    to deliver it again at the due time; a queue that cannot reschedule by id must be told
    to redeliver it."""
    return result.outcome == "retry" and result.error is None


def _bucket(result: JobResult) -> str:
    if result.outcome == "suspended" or (result.outcome == "completed" and not result.replayed):
        return "succeeded"
    if result.outcome == "failed":
        return "failed"
    if result.outcome == "retry":
        return "retried"
    return "skipped"
