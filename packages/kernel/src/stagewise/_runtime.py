"""What every handler works with: the ports, the workflows, the settings, and what this
process is doing (attempts running here, stages handed to it, callers waiting for runs).

`Runtime.unit(command)` is the one way a handler opens a transaction: a `UnitOfWork`
(`_unit.py`) whose aggregates decide, written before the commit, acted on after it
(`after_commit`): an outside transport fed, attempts of cancelled runs stopped, waiters
resolved, stale blobs deleted, wake-up hints left with the scheduler. Each of those is
best effort (logged, never raised): the state is already committed, and whatever was
missed is found again by maintenance.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

from stagewise._context import AttemptBuffer, CancellationToken
from stagewise._decisions import Rules, StartedAttempt
from stagewise._errors import WorkflowNotFoundError
from stagewise._execution import StagePool
from stagewise._group import GroupCommit
from stagewise._plugins import PluginRunner
from stagewise._ports import (
    BlobStore,
    ChangeFeed,
    Clock,
    EventSink,
    IdGenerator,
    JobTransport,
    NoChangeFeed,
    Persistence,
    Scheduler,
    WakeCommand,
)
from stagewise._records import JobMessage
from stagewise._run import Run
from stagewise._settings import KernelSettings
from stagewise._stream_reader import StreamWaiters
from stagewise._unit import AfterCommit, UnitOfWork
from stagewise._waiters import RunWaiters, ValueWaiters
from stagewise._workflow import Workflow, WorkflowSource

logger = logging.getLogger("stagewise.kernel")


@dataclass(frozen=True, slots=True)
class Ports:
    """The outside world, as the kernel's ports (`_ports.py`)."""

    persistence: Persistence
    blob_store: BlobStore
    job_transport: JobTransport
    event_sink: EventSink
    scheduler: Scheduler
    clock: Clock
    ids: IdGenerator
    changes: ChangeFeed = field(default_factory=NoChangeFeed)
    """Hints of other processes' commits, for readers that wait (`_waiters`)."""


@dataclass
class Inflight:
    """An attempt executing in this process: how to reach its running code."""

    run_id: str
    stage_id: str
    attempt: int
    token: CancellationToken = field(default_factory=CancellationToken)
    buffer: AttemptBuffer = field(default_factory=AttemptBuffer)
    lease_until: datetime | None = None
    """Its lease as last written (at its start, then by each heartbeat): until then no
    other worker can take its stage, so its finish may be tried again."""


class Runtime:
    """The ports, workflows, plugins and settings, and this process's own state."""

    def __init__(
        self,
        *,
        ports: Ports,
        registry: WorkflowSource,
        plugins: PluginRunner,
        settings: KernelSettings,
    ) -> None:
        self.ports = ports
        self.registry = registry
        self.plugins = plugins
        self.settings = settings
        self.inflight: dict[str, Inflight] = {}
        """Attempts running in this process, by job id."""
        self.handoffs: dict[str, StartedAttempt] = {}
        """Stages started for this process (eager dispatch), by job id, until executed."""
        self.waiters = RunWaiters()
        """`Kernel.wait_for_run` callers, resolved after the commit that ends their run."""
        self.stream_waiters = StreamWaiters()
        """`Kernel.read_stream` callers, resolved after a commit that writes their stream
        (or ends their run)."""
        self.value_waiters = ValueWaiters()
        """`Kernel.get_event` callers, resolved after the commit that publishes their value
        (or ends their run)."""
        self.group = GroupCommit(self.unit, settings.group_commit)
        self._executor: StagePool | None = None
        self._unknown_workflows: set[tuple[str, str | None]] = set()

    @property
    def now(self) -> datetime:
        return self.ports.clock.now()

    @property
    def executor(self) -> StagePool:
        """The bounded pool sync stages run on (created on first use)."""
        if self._executor is None:
            self._executor = StagePool(
                max_workers=self.settings.sync_workers, thread_name_prefix="stagewise-stage"
            )
        return self._executor

    @property
    def threads_busy(self) -> int:
        """Sync stage calls on the pool now (see `StagePool.busy`)."""
        return 0 if self._executor is None else self._executor.busy

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def workflow(self, workflow_id: str, version: str | None) -> Workflow | None:
        """The workflow at `version` (None: its newest), or None when this process does
        not have it: a run is only ever driven by the plan it was created with."""
        try:
            return self.registry.get_workflow(workflow_id, version)
        except WorkflowNotFoundError:
            return None

    def left_to_others(self, run: Run) -> bool:
        """Whether maintenance must leave `run` to workers that have its workflow version
        (logged once per version): a run this process cannot plan for is skipped, never
        failed, and never fails the batch it came in."""
        if run.workflow is not None:
            return False
        key = (run.record.workflow_id, run.record.workflow_version)
        if key not in self._unknown_workflows:
            self._unknown_workflows.add(key)
            logger.warning(
                "workflow %r version %r is not registered in this process; its runs are "
                "left to workers that have it",
                *key,
            )
        return True

    def hand_over(self, started: Iterable[StartedAttempt]) -> list[JobMessage]:
        """Make stages started for this process executable without a start transaction;
        their jobs. Only once their transaction committed: a rolled-back hand-off starts
        nothing."""
        jobs = []
        for attempt in started:
            self.handoffs[attempt.job.job_id] = attempt
            jobs.append(attempt.job)
        return jobs

    def works_on(self, run_id: str) -> bool:
        """Whether an attempt of the run is running in this process, or handed to it."""
        return any(a.run_id == run_id for a in self.inflight.values()) or any(
            h.run.run_id == run_id for h in self.handoffs.values()
        )

    # --- transactions ------------------------------------------------------------------

    @asynccontextmanager
    async def unit(self, command: str) -> AsyncIterator[UnitOfWork]:
        """A transaction of `command`: the block decides, its changes are written before
        the commit and acted on after it."""
        ports = self.ports
        async with ports.persistence.transaction() as tx:
            rules = Rules(ports.clock.now(), ports.ids.new_id, self.settings, command)
            unit = UnitOfWork(
                tx,
                rules=rules,
                workflows=self.workflow,
                consumers=self.plugins.consumers_for,
                transport=ports.job_transport,
                blobs=ports.blob_store,
            )
            yield unit
            after = await unit.write()
        await self.after_commit(after, command)

    async def wake(self, command: WakeCommand, at: datetime) -> None:
        """A hint for the scheduler, outside any transaction's changes (best effort)."""
        try:
            await self.ports.scheduler.wake(command, at)
        except Exception:
            logger.exception("scheduler hint failed (maintenance will find the work)")

    async def after_commit(self, after: AfterCommit, command: str) -> None:
        ports = self.ports
        try:
            # An outside transport is fed only now, so it never sees a job whose transaction
            # rolled back. If this fails the state is still right: the stage waits, and
            # lease.reapStale enqueues it again after `requeue_after`.
            if after.acks:
                await ports.job_transport.ack(after.acks)
            for run_id in after.discard_runs:
                await ports.job_transport.discard_run(run_id)
            if after.jobs:
                await ports.job_transport.enqueue(after.jobs)
        except Exception:
            logger.exception(
                "job transport failed after commit; maintenance will repeat the enqueue",
                extra={"command": command},
            )
        for run_id in after.stop_runs:
            for attempt in self.inflight.values():
                if attempt.run_id == run_id:
                    attempt.token._cancel()
        self.waiters.resolve(after.runs)
        self.value_waiters.resolve(after.values, after.runs)
        self.stream_waiters.resolve(after.stream_items, after.runs)
        for key in after.blob_deletes:
            try:
                await ports.blob_store.delete(key)
            except Exception:
                logger.exception("could not delete blob %s", key)
        for wake_command, at in sorted(after.wakeups, key=lambda hint: hint[1]):
            await self.wake(wake_command, at)
