"""One command's transaction: load the runs it decides about, write what they decided.

Theory of operation
-------------------
The run aggregate (`_run.Run`) decides; handlers only apply. A handler opens a
`UnitOfWork` (`Runtime.unit(command)`), one transaction of the `Persistence` port, and:

1. **loads**: `lock(run_ids)` locks the runs in id order, reading them and their stages in
   one statement where the database allows, and builds an aggregate of each with its
   workflow (`adopt` takes a run `claim_pending` just locked);
2. **decides**, by calling the aggregates' methods (`add` takes a run it creates); a job it
   will run itself in this process (eager dispatch) it `withdraw`s, so that it never
   reaches the transport;
3. **writes** (`write`): every aggregate's changes go into one `Changeset`, with one
   delivery row per event and consumer, applied in the transaction; the blobs those rows
   refer to are written first; for a transport in the same database the job enqueues,
   acks and discards go in the same transaction too.

What must wait for the commit is gathered into an `AfterCommit`: feeding a transport
outside the database (so it never gets a job whose transaction rolled back), stopping
attempts of cancelled runs that run in this process, resolving `wait_for_run` callers,
deleting blobs nothing refers to, and the wake-up hints, which are derived from what
changed (a job due, a lease to watch, a poll due, events to deliver, a run to claim).
The runtime acts on it only once the transaction committed: nobody hears of a change that
might still roll back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from stagewise._decisions import BlobWrite, Changes, Rules
from stagewise._plugins import SINK_CONSUMER
from stagewise._ports import BlobStore, JobTransport, Transaction, WakeCommand
from stagewise._records import (
    Changeset,
    Delivery,
    EventRecord,
    IdempotencyRecord,
    JobMessage,
    LogRecord,
    RunRecord,
    RunValueRecord,
    RunWrite,
    SignalRecord,
    StageRecord,
    StreamItemRecord,
)
from stagewise._run import Run
from stagewise._states import RunStatus, StageStatus
from stagewise._workflow import Workflow


@dataclass
class AfterCommit:
    """What a committed transaction leaves to do (see the module docstring)."""

    jobs: list[JobMessage] = field(default_factory=list)
    """For a transport outside the database: jobs to enqueue now."""
    acks: list[str] = field(default_factory=list)
    discard_runs: list[str] = field(default_factory=list)
    stop_runs: list[str] = field(default_factory=list)
    """Runs whose attempts running here must stop (cancelled)."""
    runs: list[RunRecord] = field(default_factory=list)
    """Every run the transaction held, as committed (for `wait_for_run`)."""
    blob_deletes: list[str] = field(default_factory=list)
    values: list[RunValueRecord] = field(default_factory=list)
    """Values published (for `get_event` callers)."""
    stream_items: list[StreamItemRecord] = field(default_factory=list)
    """Stream items written (for `read_stream` callers)."""
    wakeups: set[tuple[WakeCommand, datetime]] = field(default_factory=set)


class UnitOfWork:
    """One transaction of one command: its aggregates, and what they changed."""

    def __init__(
        self,
        tx: Transaction,
        *,
        rules: Rules,
        workflows: Callable[[str, str | None], Workflow | None],
        consumers: Callable[[str], list[str]],
        transport: JobTransport,
        blobs: BlobStore,
    ) -> None:
        self.tx = tx
        self.rules = rules
        self.runs: dict[str, Run] = {}
        """The runs this transaction holds, by id."""
        self.keys: list[IdempotencyRecord] = []
        """Idempotency records to write with the changes they guard."""
        self.acks: list[str] = []
        """Deliveries done with, beyond what the aggregates decided."""
        self._withdrawn: set[str] = set()
        self._workflows = workflows
        self._consumers = consumers
        self._transport = transport
        self._blobs = blobs
        self.joined = transport.joins(tx)
        """Whether the transport's operations commit with this transaction."""

    @property
    def now(self) -> datetime:
        return self.rules.now

    # --- loading ---------------------------------------------------------------------

    async def lock(self, run_ids: Sequence[str], *, skip_locked: bool = False) -> None:
        """Lock and load the runs not held yet (in id order: call it before locking
        anything else in the unit, so that the order holds across all it locks). A run
        that does not exist (or, with `skip_locked`, is locked elsewhere) gets no
        aggregate."""
        wanted = sorted({r for r in run_ids if r not in self.runs})
        if not wanted:
            return
        for record, stages in await self.tx.runs.load(wanted, skip_locked=skip_locked):
            self._hold(record, stages)

    async def run(self, run_id: str) -> Run | None:
        """The run, locked and loaded (None if there is none)."""
        await self.lock([run_id])
        return self.runs.get(run_id)

    def adopt(self, record: RunRecord) -> Run:
        """An aggregate of a run `claim_pending` just locked, without reading it again: a
        PENDING run has no stages (nothing moves a run back to PENDING)."""
        held = self.runs.get(record.run_id)
        return held if held is not None else self._hold(record, ())

    def add(self, run: Run) -> Run:
        """A run created in this transaction (`Run.create`)."""
        self.runs[run.record.run_id] = run
        return run

    def _hold(self, record: RunRecord, stages: Iterable[StageRecord]) -> Run:
        workflow = self._workflows(record.workflow_id, record.workflow_version)
        run = Run(record, stages, workflow=workflow, rules=self.rules)
        self.runs[record.run_id] = run
        return run

    def pending_key(self, scope: str, key: str) -> IdempotencyRecord | None:
        """An idempotency record this transaction is about to write (a transaction sees
        its own writes)."""
        return next((r for r in self.keys if (r.scope, r.key) == (scope, key)), None)

    def withdraw(self, job: JobMessage) -> None:
        """This process runs `job` itself (eager dispatch): it never reaches the transport."""
        self._withdrawn.add(job.job_id)

    # --- writing ---------------------------------------------------------------------

    async def write(self) -> AfterCommit:
        """Write everything inside the transaction; what is left for after the commit."""
        after = AfterCommit(acks=list(self.acks))
        new_runs: list[RunRecord] = []
        writes: list[RunWrite] = []
        stages: list[StageRecord] = []
        deleted: list[tuple[str, str]] = []
        events: list[EventRecord] = []
        logs: list[LogRecord] = []
        blob_writes: list[BlobWrite] = []
        signals: list[SignalRecord] = []
        values: list[RunValueRecord] = []
        items: list[StreamItemRecord] = []
        for run_id, run in self.runs.items():
            taken = run.take_changes()
            changes = taken.changes
            if changes.run is not None:
                if taken.expected_version is None:
                    new_runs.append(changes.run)
                else:
                    writes.append(RunWrite(changes.run, taken.expected_version))
            stages += changes.stages
            deleted += [(run_id, stage_id) for stage_id in changes.deleted]
            events += changes.events
            logs += changes.logs
            blob_writes += changes.blob_writes
            signals += changes.signals
            values += changes.values
            items += changes.stream_items
            self._collect(after, run, changes, new=taken.expected_version is None)
        deliveries = [
            Delivery(event_id=e.event_id, consumer=consumer, run_id=e.run_id, seq=e.seq)
            for e in events
            for consumer in (SINK_CONSUMER, *self._consumers(e.type))
        ]
        if events:
            after.wakeups.add(("outbox.flush", self.now))
        await self._put_blobs(blob_writes)
        await self.tx.apply(
            Changeset(
                new_runs=tuple(new_runs),
                runs=tuple(writes),
                stages=tuple(stages),
                deleted_stages=tuple(deleted),
                events=tuple(events),
                deliveries=tuple(deliveries),
                logs=tuple(logs),
                idempotency=tuple(self.keys),
                signals=tuple(signals),
                values=tuple(values),
                stream_items=tuple(items),
            )
        )
        if self.joined:
            await self._feed_transport(after)
        return after

    def _collect(self, after: AfterCommit, run: Run, changes: Changes, *, new: bool) -> None:
        """The transport's part of a run's changes, and the wake-ups they call for."""
        run_id = run.record.run_id
        wake = after.wakeups
        for job in changes.jobs:
            if job.job_id not in self._withdrawn:
                after.jobs.append(job)
                wake.add(("job.execute", job.available_at))
        after.acks += changes.acks
        if changes.discard_jobs:
            after.discard_runs.append(run_id)
        if changes.stop_attempts:
            after.stop_runs.append(run_id)
        after.runs.append(run.record)
        after.values += changes.values
        after.stream_items += changes.stream_items
        after.blob_deletes += changes.blob_deletes
        for stage in changes.stages:
            status = stage.status
            if status is StageStatus.RUNNING:
                if stage.lease_expires_at is not None:
                    wake.add(("lease.reapStale", stage.lease_expires_at))
            elif (
                status is StageStatus.SUSPENDED
                and stage.due_at is not None
                and stage.lease_expires_at is None  # not held by a poller right now
            ):
                wake.add(("stage.pollSuspended", stage.due_at))
        if new and run.record.status is RunStatus.PENDING:
            wake.add(("run.claimPending", self.now))
        if run.record.deadline is not None and not run.record.status.is_terminal:
            wake.add(("lease.reapStale", run.record.deadline))  # the reaper enforces it

    async def _put_blobs(self, writes: list[BlobWrite]) -> None:
        # Before the rows that refer to them commit: no row ever points at a missing blob.
        for write in writes:
            await self._blobs.put(write.key, write.data)

    async def _feed_transport(self, after: AfterCommit) -> None:
        """A transport in the same database: its operations commit with the transaction."""
        transport, tx = self._transport, self.tx
        if after.acks:
            await transport.ack(after.acks, tx=tx)
        for run_id in after.discard_runs:
            await transport.discard_run(run_id, tx=tx)
        if after.jobs:
            await transport.enqueue(after.jobs, tx=tx)
        after.acks, after.discard_runs, after.jobs = [], [], []
