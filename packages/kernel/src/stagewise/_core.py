"""The kernel's ports and the unit of work every handler runs in."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

from stagewise._context import AttemptBuffer, CancellationToken
from stagewise._errors import RunNotFoundError, WorkflowNotFoundError
from stagewise._group import GroupCommit
from stagewise._plugins import SINK_CONSUMER, PluginRunner
from stagewise._ports import (
    BlobStore,
    Clock,
    EventSink,
    IdGenerator,
    JobTransport,
    Persistence,
    Scheduler,
    Transaction,
    WorkflowSource,
)
from stagewise._records import Delivery, JobMessage, RunRecord, StageRecord
from stagewise._scope import Effects, RunScope, flush_scopes
from stagewise._settings import KernelSettings
from stagewise._waiters import RunWaiters
from stagewise._workflow import Workflow

logger = logging.getLogger("stagewise.kernel")


@dataclass
class Inflight:
    """An attempt executing in this process: how to reach its running code."""

    run_id: str
    stage_id: str
    attempt: int
    token: CancellationToken = field(default_factory=CancellationToken)
    buffer: AttemptBuffer = field(default_factory=AttemptBuffer)


@dataclass(frozen=True, slots=True)
class Handoff:
    """A stage a transaction started for this worker (eager dispatch: at creation, at claim,
    or when the previous stage finished): its job and what its execution needs, as
    committed, so that it starts without another transaction."""

    job: JobMessage
    worker_id: str
    run: RunRecord
    stages: dict[str, StageRecord]


class Unit:
    """One transaction of one command: its scopes and effects."""

    def __init__(self, core: Core, tx: Transaction, command: str) -> None:
        self.core = core
        self.tx = tx
        self.command = command
        self.effects = Effects()
        self.scopes: dict[str, RunScope] = {}
        self.joined = core.job_transport.joins(tx)

    async def lock_run(self, run_id: str, *, skip_locked: bool = False) -> RunScope | None:
        """Lock the run and load its stages; None if it does not exist (or is locked and
        `skip_locked`). Locks are taken in the order asked: callers that lock several runs
        one by one sort their ids first, so two transactions never wait on each other in a
        cycle."""
        if run_id in self.scopes:
            return self.scopes[run_id]
        if not skip_locked:
            await self.lock_runs([run_id])
            return self.scopes.get(run_id)
        run = await self.tx.runs.lock(run_id, skip_locked=True)
        if run is None:
            return None
        stages = await self.tx.stages.for_run(run_id)
        scope = RunScope(self.core, self.tx, self.effects, run, stages, self.command)
        self.scopes[run_id] = scope
        return scope

    async def lock_runs(self, run_ids: Sequence[str]) -> None:
        """Lock the runs (in id order) and load their stages: one or two statements for the
        whole set. A run that does not exist gets no scope. Call it before locking anything else
        in the unit, so that the id order holds across everything the unit locks."""
        wanted = [r for r in run_ids if r not in self.scopes]
        if not wanted:
            return
        for run, stages in await self.tx.runs.lock_with_stages(wanted):
            self.scopes[run.run_id] = RunScope(
                self.core, self.tx, self.effects, run, stages, self.command
            )

    def adopt_pending(self, run: RunRecord) -> RunScope:
        """A scope for a run this transaction just inserted, or that `claim_pending` just
        locked, without reading it again: the row is locked and current, and a PENDING run
        has no stage rows yet (nothing moves a run back to PENDING), so there is nothing
        else to load."""
        if run.run_id in self.scopes:
            return self.scopes[run.run_id]
        scope = RunScope(self.core, self.tx, self.effects, run, [], self.command)
        self.scopes[run.run_id] = scope
        return scope

    async def require_run(self, run_id: str) -> RunScope:
        scope = await self.lock_run(run_id)
        if scope is None:
            raise RunNotFoundError(run_id)
        return scope

    async def write(self) -> None:
        """Write everything inside the transaction (rows, outbox, joined transport ops)."""
        await flush_scopes(self.tx, self.scopes.values())
        effects = self.effects
        if effects.events:
            runner = self.core.plugins
            deliveries = [
                Delivery(event_id=e.event_id, consumer=consumer, run_id=e.run_id, seq=e.seq)
                for e in effects.events
                for consumer in (SINK_CONSUMER, *runner.consumers_for(e.type))
            ]
            await self.tx.outbox.append(effects.events, deliveries)
            effects.hint("outbox.flush", self.core.now)
        if self.joined:
            transport = self.core.job_transport
            if effects.acks:
                await transport.ack(effects.acks, tx=self.tx)
            for run_id in effects.discard_runs:
                await transport.discard_run(run_id, tx=self.tx)
            if effects.jobs:
                await transport.enqueue(effects.jobs, tx=self.tx)


class Core:
    """Everything handlers share: ports, settings, and attempts running in this process."""

    def __init__(
        self,
        *,
        persistence: Persistence,
        blob_store: BlobStore,
        job_transport: JobTransport,
        event_sink: EventSink,
        scheduler: Scheduler,
        clock: Clock,
        registry: WorkflowSource,
        plugins: PluginRunner,
        ids: IdGenerator,
        settings: KernelSettings,
    ) -> None:
        self.persistence = persistence
        self.blob_store = blob_store
        self.job_transport = job_transport
        self.event_sink = event_sink
        self.scheduler = scheduler
        self.clock = clock
        self.registry = registry
        self.plugins = plugins
        self.ids = ids
        self.settings = settings
        self.inflight: dict[str, Inflight] = {}
        self.handoffs: dict[str, Handoff] = {}
        """Stages started by eager dispatch, by job id, until their `job.execute` comes."""
        self.run_waiters = RunWaiters()
        """`Kernel.wait_for_run` callers, resolved after the commit that ends their run."""
        self.group = GroupCommit(self)
        self._executor: ThreadPoolExecutor | None = None
        self._unknown_workflows: set[str] = set()

    @property
    def now(self) -> datetime:
        return self.clock.now()

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.settings.sync_workers, thread_name_prefix="stagewise-stage"
            )
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def hand_over(self, handoffs: Iterable[Handoff]) -> list[JobMessage]:
        """Make stages started for a worker executable without a start transaction; their
        jobs. Only once their transaction committed: a rolled-back hand-off starts nothing."""
        jobs = []
        for handoff in handoffs:
            self.handoffs[handoff.job.job_id] = handoff
            jobs.append(handoff.job)
        return jobs

    def works_on(self, run_id: str) -> bool:
        """Whether an attempt of the run is running in this process, or handed to it."""
        return any(a.run_id == run_id for a in self.inflight.values()) or any(
            h.run.run_id == run_id for h in self.handoffs.values()
        )

    def find_workflow(self, workflow_id: str) -> Workflow | None:
        """The workflow, or None (logged) when this process does not know it: maintenance
        leaves such runs to a worker that does, instead of failing its whole batch."""
        try:
            return self.registry.get_workflow(workflow_id)
        except WorkflowNotFoundError:
            if workflow_id not in self._unknown_workflows:
                self._unknown_workflows.add(workflow_id)
                logger.warning(
                    "workflow %r is not registered in this process; its runs are left to "
                    "workers that know it",
                    workflow_id,
                )
            return None

    @asynccontextmanager
    async def unit(self, command: str) -> AsyncIterator[Unit]:
        """Run a block in one transaction; write its effects before commit and feed the
        outside world after."""
        async with self.persistence.transaction() as tx:
            unit = Unit(self, tx, command)
            yield unit
            await unit.write()
        await self.after_commit(unit)

    async def after_commit(self, unit: Unit) -> None:
        effects = unit.effects
        if not unit.joined:
            # An external transport is fed only now, so it never sees a job whose
            # transaction rolled back. If this fails the state is still right: the stage
            # waits, and lease.reapStale enqueues it again after `requeue_after`.
            try:
                if effects.acks:
                    await self.job_transport.ack(effects.acks)
                for run_id in effects.discard_runs:
                    await self.job_transport.discard_run(run_id)
                if effects.jobs:
                    await self.job_transport.enqueue(effects.jobs)
            except Exception:
                logger.exception(
                    "job transport failed after commit; maintenance will repeat the enqueue",
                    extra={"command": unit.command},
                )
        for run_id in effects.cancelled_runs:
            for attempt in self.inflight.values():
                if attempt.run_id == run_id:
                    attempt.token._cancel()
        self.run_waiters.resolve(scope.run for scope in unit.scopes.values())
        for key in effects.blob_deletes:
            try:
                await self.blob_store.delete(key)
            except Exception:
                logger.exception("could not delete blob %s", key)
        for command, at in sorted(set(effects.hints), key=lambda h: h[1]):
            try:
                await self.scheduler.wake(command, at)
            except Exception:
                logger.exception("scheduler hint failed (maintenance will find the work)")
