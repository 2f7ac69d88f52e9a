"""The ports: everything the kernel needs from the outside world, as small Protocols.

The kernel does no I/O of its own. It reads time from a `Clock`, makes ids with `IdGenerator`,
keeps state through `Persistence`, hands jobs to a `JobTransport`, stores large payloads in a
`BlobStore`, publishes events to an `EventSink` and leaves wake-up hints with a `Scheduler`.
Adapters fit these structurally; nothing needs to inherit from them.

Contract notes that every adapter must honour (the contract suite in `tests/contract` checks
them on every adapter):

* `Persistence.transaction()` is a unit of work: everything done through the yielded
  `Transaction` commits together when the block exits normally and is rolled back entirely
  when it raises. Nothing is visible to other transactions before commit.
* `RunStore.lock(run_id)` takes an exclusive lock on the run row until the transaction ends
  (`SELECT ... FOR UPDATE`). The kernel writes a run's stage rows, events and idempotency
  records only while holding that run's lock, which is what makes concurrent
  `run.transition` calls and racing workers safe. With `skip_locked=True` a row locked by
  someone else is reported as `None` instead of waited for.
* `JobTransport.joins(tx)` says whether the transport lives in the same database as the
  persistence and can enqueue/ack/discard inside `tx`, committing with it. When it cannot,
  the kernel feeds it after commit and repairs lost enqueues in `lease.reapStale`.
* Times are timezone-aware datetimes from the injected clock, never the database's clock, so a
  `FakeClock` drives leases, retries and polls in tests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from stagewise._records import (
    ClaimedDelivery,
    Delivery,
    EventRecord,
    IdempotencyRecord,
    JobMessage,
    LogRecord,
    RunRecord,
    StageRecord,
)
from stagewise._states import RunStatus

if TYPE_CHECKING:
    from stagewise._events import Event
    from stagewise._workflow import Workflow


# --- persistence -------------------------------------------------------------------------


class RunStore(Protocol):
    async def insert(self, run: RunRecord) -> None:
        """Raises `DuplicateRecordError` when the run id exists."""
        ...

    async def get(self, run_id: str) -> RunRecord | None: ...

    async def lock(self, run_id: str, *, skip_locked: bool = False) -> RunRecord | None:
        """Read the run and hold an exclusive lock on it until the transaction ends."""
        ...

    async def lock_many(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """Lock every run of `run_ids` that exists, in run_id order, and return them in that
        order: one round trip for a batch, and two transactions locking overlapping sets
        never wait on each other in a cycle."""
        ...

    async def lock_with_stages(
        self, run_ids: Sequence[str]
    ) -> list[tuple[RunRecord, list[StageRecord]]]:
        """`lock_many`, each run with its stage rows in (group_index, stage_id) order, as
        current once the locks are held: in one round trip where the database allows.

        Adapters may rely on a rule the kernel keeps: a transaction that writes any of a
        run's stage rows also writes the run's row. (On PostgreSQL the locking statement
        reads the stages too, with a snapshot that can predate the lock; a run whose row
        changed since that snapshot is the only kind whose stages may have, and only those
        are read again.)"""
        ...

    async def save(self, run: RunRecord) -> None:
        """Write every field of the run (an upsert)."""
        ...

    async def save_many(self, runs: Sequence[RunRecord]) -> None:
        """`save` for several runs, in one statement where the database allows."""
        ...

    async def claim_pending(self, limit: int) -> list[RunRecord]:
        """Lock up to `limit` PENDING runs, highest priority first, then oldest.

        Rows locked by another transaction are skipped (`FOR UPDATE SKIP LOCKED`), so
        concurrent claimers never get the same run. The rows come back unchanged; the
        kernel writes their new state with `save`.
        """
        ...

    async def find(
        self,
        *,
        status: RunStatus | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Runs newest first, for listings."""
        ...


class StageStore(Protocol):
    async def insert_many(self, stages: Sequence[StageRecord]) -> None:
        """Raises `DuplicateRecordError` when a (run_id, stage_id) exists."""
        ...

    async def for_run(self, run_id: str) -> list[StageRecord]:
        """Every stage row of the run, in (group_index, stage_id) order."""
        ...

    async def for_runs(self, run_ids: Sequence[str]) -> list[StageRecord]:
        """Every stage row of the runs, in (run_id, group_index, stage_id) order."""
        ...

    async def save_many(self, stages: Sequence[StageRecord]) -> None:
        """Write every field of the stage rows (an upsert)."""
        ...

    async def delete(self, run_id: str, stage_ids: Sequence[str]) -> None: ...

    async def due_for_poll(self, now: datetime, limit: int) -> list[StageRecord]:
        """SUSPENDED stages whose `due_at` has come and that no poller holds.

        A poller holds a stage while its `lease_expires_at` is in the future. Earliest due
        first. A plain read: the kernel locks the runs before it claims anything.
        """
        ...

    async def expired_leases(
        self, now: datetime, limit: int, *, worker_id: str | None = None
    ) -> list[StageRecord]:
        """RUNNING stages whose lease expired, plus (with `worker_id`) every RUNNING stage
        that worker holds, whatever its expiry. A plain read."""
        ...

    async def unstarted(
        self, enqueued_before: datetime, now: datetime, limit: int
    ) -> list[StageRecord]:
        """PENDING or RETRYING stages that are due (`due_at <= now`) and whose job was
        handed to the transport before `enqueued_before`: their delivery may be lost."""
        ...


class OutboxStore(Protocol):
    async def append(self, events: Sequence[EventRecord], deliveries: Sequence[Delivery]) -> None:
        """Raises `DuplicateRecordError` for an event id (or run_id, seq) that exists."""
        ...

    async def claim(
        self, *, now: datetime, limit: int, claimer: str, claim_until: datetime
    ) -> list[ClaimedDelivery]:
        """Claim pending deliveries in per-(consumer, run) order.

        A (consumer, run) group is eligible when its earliest pending delivery is due
        (`next_attempt_at` is null or <= now) and unclaimed (`claimed_until` is null or
        <= now). All pending deliveries of eligible groups are claimed, up to `limit`, and
        returned ordered by (consumer, run_id, seq). Two claimers never get the same group.
        """
        ...

    async def update(self, deliveries: Sequence[Delivery]) -> None:
        """Write status, attempts, next_attempt_at, claim and last_error of deliveries."""
        ...

    async def replay_dead(
        self, *, consumer: str | None, event_ids: Sequence[str] | None, now: datetime
    ) -> int:
        """Make dead-lettered deliveries pending again (attempts reset); returns how many."""
        ...

    async def events(self, run_id: str, *, after_seq: int = 0) -> list[EventRecord]: ...

    async def dead(
        self, *, consumer: str | None = None, limit: int = 100
    ) -> list[ClaimedDelivery]: ...


class IdempotencyStore(Protocol):
    async def get(self, scope: str, key: str) -> IdempotencyRecord | None: ...

    async def insert(self, record: IdempotencyRecord) -> bool:
        """Insert unless (scope, key) exists; False when it did (`ON CONFLICT DO NOTHING`).

        A concurrent insert of the same key waits for the other transaction to finish.
        """
        ...

    async def save(self, record: IdempotencyRecord) -> None: ...

    async def purge_expired(self, now: datetime) -> int: ...


class LogStore(Protocol):
    async def append(self, records: Sequence[LogRecord]) -> None: ...

    async def for_run(
        self, run_id: str, *, stage_id: str | None = None, limit: int = 1000
    ) -> list[LogRecord]: ...


class Transaction(Protocol):
    """One unit of work. Its stores see and change the same transaction."""

    @property
    def runs(self) -> RunStore: ...

    @property
    def stages(self) -> StageStore: ...

    @property
    def outbox(self) -> OutboxStore: ...

    @property
    def idempotency(self) -> IdempotencyStore: ...

    @property
    def logs(self) -> LogStore: ...


class Persistence(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A unit of work: commit on normal exit, roll back entirely on an exception."""
        ...


# --- job transport -----------------------------------------------------------------------


class JobTransport(Protocol):
    """Delivers jobs to workers. Delivery only: the stage row is the truth."""

    def joins(self, tx: Transaction) -> bool:
        """True when `tx` belongs to the transport's own database, so enqueue, ack and
        discard inside it commit atomically with the kernel's state change."""
        ...

    async def enqueue(self, jobs: Sequence[JobMessage], *, tx: Transaction | None = None) -> None:
        """Make jobs deliverable from their `available_at`."""
        ...

    async def dequeue(self, *, worker_id: str, limit: int, lease_for: float) -> list[JobMessage]:
        """Take up to `limit` available jobs (priority, then availability order), each
        invisible to other dequeuers until its lease expires or it is acked."""
        ...

    async def ack(self, job_ids: Sequence[str], *, tx: Transaction | None = None) -> None:
        """Remove delivered jobs. Acking an unknown or already acked job does nothing."""
        ...

    async def retry_at(self, job_id: str, at: datetime) -> None:
        """Give a dequeued job back, to be delivered again from `at`."""
        ...

    async def extend_lease(self, job_id: str, *, lease_for: float) -> bool:
        """Push a dequeued job's lease out; False if the job is gone."""
        ...

    async def release_expired(self, *, worker_id: str | None = None) -> int:
        """Make jobs whose lease expired deliverable again (with `worker_id`: every job
        that worker holds, expired or not). Returns how many."""
        ...

    async def discard_run(self, run_id: str, *, tx: Transaction | None = None) -> int:
        """Drop every queued job of the run; returns how many."""
        ...


# --- blobs, events, scheduling, time, ids ------------------------------------------------


class BlobStore(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes:
        """Raises `BlobNotFoundError` for a missing key."""
        ...

    async def has(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Deleting a missing key does nothing."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Keys starting with `prefix`, sorted."""
        ...


class EventSink(Protocol):
    async def publish(self, event: Event) -> None:
        """Take one event. Raising means "not delivered": it is retried with backoff and
        later events of the same run wait for it (per-run order)."""
        ...


WakeCommand = Literal[
    "run.claimPending", "job.execute", "stage.pollSuspended", "lease.reapStale", "outbox.flush"
]


class Scheduler(Protocol):
    async def wake(self, command: WakeCommand, at: datetime) -> None:
        """A hint that `command` has work from `at` on. Only a hint: losing it delays work
        until the next maintenance pass, never loses it."""
        ...


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...

    def sleep(self, seconds: float) -> Awaitable[None]:
        """Wait `seconds` from the moment of the call (not from when the awaitable is
        first awaited). An `async def sleep` satisfies this."""
        ...


class IdGenerator(Protocol):
    def new_id(self) -> str: ...


class WorkflowSource(Protocol):
    """What `create_kernel(registry=...)` needs: `WorkflowRegistry` is one."""

    def get_workflow(self, workflow_id: str) -> Workflow:
        """Raises `WorkflowNotFoundError` for an unknown id."""
        ...
