"""Drive a kernel until nothing is left to do, skipping time on a FakeClock.

The driver plays every role a host plays — claims runs, executes jobs concurrently,
heartbeats them, polls suspended stages, reaps leases, flushes the outbox — and when nothing
can move at the current time it advances the clock to the next moment something is due: a
retry's backoff, a poll, a lease expiry, a stage sleeping on the clock. A workflow that waits
an hour runs in milliseconds, and every timeout is exercised for real.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from stagewise._attempt import stored_output
from stagewise._commands import (
    JobExecute,
    JobExecuteResult,
    JobHeartbeat,
    LeaseReapStale,
    OutboxFlush,
    RunClaimPending,
    RunCreate,
    StagePollSuspended,
)
from stagewise._errors import LeaseLost
from stagewise._kernel import Kernel, create_kernel
from stagewise._plugins import Plugin
from stagewise._ports import BlobStore, EventSink, IdGenerator, JobTransport, Persistence
from stagewise._query import RunFilter
from stagewise._records import JobMessage, RunRecord, StageRecord
from stagewise._settings import KernelSettings
from stagewise._states import RunStatus
from stagewise._workflow import Workflow, WorkflowRegistry
from stagewise.testing._adapters import (
    CollectingEventSink,
    InMemoryBlobStore,
    InMemoryJobQueue,
    RecordingScheduler,
    SequentialIds,
)
from stagewise.testing._clock import FakeClock
from stagewise.testing._memory import InMemoryPersistence


class DrivableTransport(JobTransport, Protocol):
    """A job transport the driver can ask when its next job becomes deliverable
    (`InMemoryJobQueue` and `stagewise_sql`'s transport both can)."""

    async def next_available_at(self) -> datetime | None: ...


@dataclass
class DriveReport:
    steps: int = 0
    skipped: timedelta = timedelta(0)
    """How far the clock was advanced."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """`job.execute` outcomes, plus `lease_lost` for refused deliveries."""
    settled: bool = True
    """False when it stopped with runs still active and nothing scheduled (stuck)."""


class StuckError(AssertionError):
    """The driver made no progress in `max_steps` steps."""


async def run_until_idle(
    kernel: Kernel,
    *,
    clock: FakeClock,
    transport: DrivableTransport,
    scheduler: RecordingScheduler,
    persistence: Persistence,
    worker_id: str = "test-worker",
    concurrency: int = 16,
    max_steps: int = 100_000,
) -> DriveReport:
    """Run `kernel` until every run is finished (or waiting with nothing scheduled) and every
    event is delivered, advancing `clock` whenever nothing can move at the current time.

    Raises:
        StuckError: after `max_steps` loop iterations.
    """
    report = DriveReport()
    start = clock.now()
    drive = _Drive(kernel, clock, transport, scheduler, persistence, worker_id, report)
    try:
        for report.steps in range(1, max_steps + 1):
            maintained = await _maintain(kernel, worker_id)
            worked = await drive.work(concurrency)
            scheduler.prune(clock.now())
            if maintained or worked:
                continue
            if not await drive.skip_time():
                return report
        raise StuckError(f"the kernel did not settle in {max_steps} steps")
    finally:
        report.skipped = clock.now() - start
        await drive.stop()


_THREAD_PATIENCE = 2.0
"""Seconds of real time a pass waits for sync stages on threads before it goes on."""


@dataclass
class _Drive:
    """One `run_until_idle`: the jobs it runs, and how it moves the clock."""

    kernel: Kernel
    clock: FakeClock
    transport: DrivableTransport
    scheduler: RecordingScheduler
    persistence: Persistence
    worker_id: str
    report: DriveReport
    running: dict[asyncio.Task[JobExecuteResult | None], JobMessage] = field(default_factory=dict)
    patient: bool = True
    """Whether a pass waits for sync stages on threads (not after one ran out of patience)."""

    async def _execute(self, job: JobMessage) -> JobExecuteResult | None:
        try:
            return await self.kernel.dispatch(JobExecute(job=job, worker_id=self.worker_id))
        except LeaseLost:
            self.report.outcomes["lease_lost"] += 1
            return None

    async def work(self, concurrency: int) -> bool:
        """Start the jobs there is room for, collect the ones that finished; whether
        anything happened."""
        moved = False
        free = concurrency - len(self.running)
        if free > 0:
            lease = self.kernel.settings.lease_seconds
            for job in await self.transport.dequeue(
                worker_id=self.worker_id,
                limit=free,
                lease_for=lease,
                workflows=self.kernel.registry.known(),
            ):
                self.running[asyncio.ensure_future(self._execute(job))] = job
                moved = True
        if self.running:
            for task in await self._wait_for_jobs():
                self.running.pop(task)
                result = task.result()
                if result is not None:
                    self.report.outcomes[result.outcome] += 1
                moved = True
        return moved

    async def _wait_for_jobs(self) -> set[asyncio.Task[JobExecuteResult | None]]:
        """The running jobs that finished, waiting until none of the others can go further
        without the clock: each is waiting on the fake clock (or on real I/O, on a SQL
        backend, where the wait stays the short one it always was).

        Why not a fixed short wait: every pass of the driver's loop makes calls (claims,
        polls, reaps, flushes), and a pass taken while a job could still move on its own
        (its next step queued on the event loop, or a sync stage busy on a thread) makes the
        number of calls depend on how fast the machine is rather than on the workflow. The
        fault sweeps place a fault at each call of a play, so a play must make the same
        calls however loaded the machine. Waiting on a thread is bounded by
        `_THREAD_PATIENCE`, so a sync stage that never returns still meets its timeout on
        the fake clock."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _THREAD_PATIENCE
        finished: set[asyncio.Task[JobExecuteResult | None]] = set()
        while True:
            # Every job that can finish without the clock, not only the first: a pass that
            # returned at the first would end before or after a sibling on a thread
            # finished, depending on the machine.
            pending = [task for task in self.running if task not in finished]
            if not pending:
                return finished
            done, _ = await asyncio.wait(
                pending, timeout=0.002, return_when=asyncio.FIRST_COMPLETED
            )
            if done:
                self.patient = True
                finished |= done
                continue
            threads = self.patient and self.kernel.sync_stages_running > 0
            if threads and loop.time() > give_up:
                self.patient = threads = False  # until a job finishes: time must move
            if not threads and not _callbacks_ready(loop):
                return finished

    async def skip_time(self) -> bool:
        """Nothing can move now: advance the clock to when something can; False when
        nothing ever will (the drive is over)."""
        clock, now = self.clock, self.clock.now()
        if self.running:
            await _heartbeat(self.kernel, self.worker_id, self.running.values())
            wake = clock.next_wakeup()
            if wake is not None:
                # Never jump past our own leases: heartbeat, then step at most half a lease.
                half = timedelta(seconds=self.kernel.settings.lease_seconds / 2)
                clock.advance_to(min(wake, now + half))
            return True  # (no wake-up: real work, a sync stage in a thread: wait for it)
        if not await _active_runs(self.persistence):
            # Runs are done; events may still wait for a delivery retry.
            retry = self.scheduler.next_after(now, command="outbox.flush")
            if retry is not None:
                clock.advance_to(retry)
            return retry is not None
        due = _next_due(clock, await self.transport.next_available_at(), self.scheduler)
        if due is None:
            self.report.settled = False
            return False
        clock.advance_to(due)
        return True

    async def stop(self) -> None:
        for task in self.running:
            task.cancel()
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)


def _callbacks_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether some other task's next step is queued on the loop (it can go on without
    anything from outside). CPython's loops keep that queue as `_ready`; on a loop that
    does not, the answer is no (and the driver waits as it did before: 2 ms)."""
    return bool(getattr(loop, "_ready", ()))


async def _maintain(kernel: Kernel, worker_id: str) -> bool:
    claimed = await kernel.dispatch(RunClaimPending(limit=100))
    polled = await kernel.dispatch(StagePollSuspended(limit=100, poller_id=worker_id))
    reaped = await kernel.dispatch(LeaseReapStale(limit=100))
    flushed = await kernel.dispatch(OutboxFlush(limit=500, flusher_id=worker_id))
    return bool(
        claimed.run_ids
        or polled.checked
        or reaped.retried
        or reaped.failed
        or reaped.timed_out
        or reaped.requeued
        or flushed.delivered
        or flushed.dead_lettered
    )


async def _heartbeat(kernel: Kernel, worker_id: str, jobs: Iterable[JobMessage]) -> None:
    for job in list(jobs):
        with contextlib.suppress(LeaseLost):  # not started yet, or finished meanwhile
            await kernel.dispatch(JobHeartbeat(job=job, worker_id=worker_id))


async def _active_runs(persistence: Persistence) -> bool:
    async with persistence.transaction() as tx:
        for status in (RunStatus.PENDING, RunStatus.RUNNING):
            if await tx.runs.find(RunFilter(status=status), limit=1):
                return True
    return False


def _next_due(
    clock: FakeClock, available: datetime | None, scheduler: RecordingScheduler
) -> datetime | None:
    now = clock.now()
    candidates = [scheduler.next_after(now), clock.next_wakeup()]
    if available is not None and available > now:
        candidates.append(available)
    due = [c for c in candidates if c is not None]
    return min(due) if due else None


class TestEnvironment:
    """A kernel on in-memory adapters and a FakeClock, ready for a workflow's tests.

    Example:
        env = TestEnvironment([my_workflow])
        run = await env.run("my-workflow", {"n": 1})
        assert run.status is RunStatus.COMPLETED
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        workflows: Sequence[Workflow] | WorkflowRegistry,
        *,
        plugins: Sequence[Plugin] = (),
        settings: KernelSettings | None = None,
        event_sink: EventSink | None = None,
        clock: FakeClock | None = None,
        external_transport: bool = False,
        persistence: Persistence | None = None,
        job_transport: DrivableTransport | None = None,
        blob_store: BlobStore | None = None,
        ids: IdGenerator | None = None,
    ) -> None:
        """By default everything is in memory. `external_transport=True` makes the queue
        behave like one outside the database (fed after commit) instead of enlisting in the
        persistence's transactions. Pass `persistence`, `job_transport`, `blob_store` (and
        the `clock` they use) to run the same tests on other adapters, e.g. SQLite; two
        environments on the same adapters (two processes, a deploy) need `ids` that do not
        collide (`SequentialIds("other")`)."""
        self.registry = (
            workflows if isinstance(workflows, WorkflowRegistry) else WorkflowRegistry(workflows)
        )
        # `is None`, not `or`: an adapter may be falsy (an empty queue has a length).
        self.clock = FakeClock() if clock is None else clock
        memory = InMemoryPersistence()
        self.persistence: Persistence = memory if persistence is None else persistence
        self.queue: DrivableTransport = (
            InMemoryJobQueue(self.clock, None if external_transport else memory)
            if job_transport is None
            else job_transport
        )
        self.blobs: BlobStore = InMemoryBlobStore() if blob_store is None else blob_store
        self.sink = CollectingEventSink()
        self.scheduler = RecordingScheduler()
        self.kernel = create_kernel(
            persistence=self.persistence,
            blob_store=self.blobs,
            job_transport=self.queue,
            event_sink=self.sink if event_sink is None else event_sink,
            scheduler=self.scheduler,
            clock=self.clock,
            registry=self.registry,
            plugins=plugins,
            ids=ids or SequentialIds(),
            settings=settings,
        )

    async def create_run(self, workflow_id: str, input: Any = None, **kwargs: Any) -> str:
        result = await self.kernel.dispatch(
            RunCreate(workflow_id=workflow_id, input=input, **kwargs)
        )
        return result.run_id

    async def run_until_idle(self, **kwargs: Any) -> DriveReport:
        return await run_until_idle(
            self.kernel,
            clock=self.clock,
            transport=self.queue,
            scheduler=self.scheduler,
            persistence=self.persistence,
            **kwargs,
        )

    async def run(self, workflow_id: str, input: Any = None, **kwargs: Any) -> RunRecord:
        """Create a run, drive everything to idle, and return the run."""
        run_id = await self.create_run(workflow_id, input, **kwargs)
        await self.run_until_idle()
        return await self.get_run(run_id)

    async def get_run(self, run_id: str) -> RunRecord:
        async with self.persistence.transaction() as tx:
            run = await tx.runs.get(run_id)
        assert run is not None, f"no run {run_id}"
        return run

    async def stages(self, run_id: str) -> dict[str, StageRecord]:
        async with self.persistence.transaction() as tx:
            return {s.stage_id: s for s in await tx.stages.for_run(run_id)}

    async def output(self, run_id: str) -> Any:
        """The run's output, fetched from the blob store when it was stored there."""
        return await stored_output(self.blobs, await self.get_run(run_id))
