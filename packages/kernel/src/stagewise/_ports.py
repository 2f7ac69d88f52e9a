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
* `RunStore.load(run_ids)` takes an exclusive lock on the run rows until the transaction
  ends (`SELECT ... FOR UPDATE`). The kernel writes a run's stage rows, events and logs only
  while holding that run's lock, which is what makes racing workers and concurrent commands
  safe; and every `RunWrite` carries the version it was read at, so a write on top of an
  unseen change is refused (`ConcurrentUpdateError`) even by an adapter that cannot lock.
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

from stagewise._query import RunFilter
from stagewise._records import (
    Changeset,
    ClaimedDelivery,
    Delivery,
    EventRecord,
    IdempotencyRecord,
    JobMessage,
    LogLine,
    RunRecord,
    StageRecord,
    WorkerRecord,
)

if TYPE_CHECKING:
    from stagewise._events import Event


# --- persistence -------------------------------------------------------------------------


class RunStore(Protocol):
    """Runs and their stages: the run aggregate's repository."""

    async def load(
        self, run_ids: Sequence[str], *, skip_locked: bool = False
    ) -> list[tuple[RunRecord, list[StageRecord]]]:
        """Lock every run of `run_ids` that exists until the transaction ends, in run_id
        order (two transactions locking overlapping sets never wait on each other in a
        cycle), and return each with its stage rows in (group_index, stage_id) order, as
        current once the lock is held. One round trip where the database allows.

        With `skip_locked`, a run locked by another transaction is left out instead of
        waited for. Adapters may rely on the rule every writer keeps: a change to any of a
        run's stages comes with the run's row at the next `version`."""
        ...

    async def claim_pending(
        self, limit: int, *, workflows: Sequence[tuple[str, str]] | None = None
    ) -> list[RunRecord]:
        """Lock up to `limit` PENDING runs, highest priority first, then oldest.

        Rows locked by another transaction are skipped (`FOR UPDATE SKIP LOCKED`), so
        concurrent claimers never get the same run. A PENDING run has no stage rows. With
        `workflows`, only runs of those (workflow id, version) pairs (a run with no version
        recorded: of those workflow ids)."""
        ...

    async def get(self, run_id: str) -> RunRecord | None:
        """The run as committed (a plain read, no lock)."""
        ...

    async def find(
        self,
        where: RunFilter | None = None,
        *,
        before: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Up to `limit` runs that pass `where` (`RunFilter.matches` says which), newest
        first: by (created_at, run_id), descending. A plain read, no lock.

        `before` is the keyset cursor: only runs whose (created_at, run_id) sorts below it,
        i.e. after the last run of the previous page (see `stagewise._query` for why this
        neither repeats nor skips a run while others are created between pages)."""
        ...

    async def active_versions(self) -> list[tuple[str, str | None, int]]:
        """(workflow id, workflow version, how many) of the PENDING and RUNNING runs, by
        workflow id and version (None: recorded before versions, sorted first)."""
        ...

    async def past_deadline(self, now: datetime, limit: int) -> list[RunRecord]:
        """Up to `limit` PENDING or RUNNING runs whose deadline is at or before `now`,
        earliest deadline first (read without locks: candidates, checked again under
        the run's lock)."""
        ...

    async def next_deadline(self, now: datetime) -> datetime | None:
        """The earliest deadline after `now` of a PENDING or RUNNING run (None: none)."""
        ...

    async def finished_before(self, before: datetime, limit: int) -> list[RunRecord]:
        """Lock up to `limit` COMPLETED, FAILED or CANCELLED runs that finished before
        `before`, oldest first (then by run id), skipping rows another transaction has locked
        (a purge never waits on a worker, nor a worker on it)."""
        ...

    async def purge(self, run_ids: Sequence[str]) -> int:
        """Delete these runs (their locks held by this transaction) with their stage rows,
        events and those events' deliveries, and log lines; how many runs were deleted.
        Idempotency keys and blobs are the caller's (`IdempotencyStore.delete`)."""
        ...


class StageStore(Protocol):
    """Reads of stage rows: for views, and the candidates maintenance looks at. Each is a
    plain read; the kernel locks a candidate's run and checks it again before it acts."""

    async def for_run(self, run_id: str) -> list[StageRecord]:
        """Every stage row of the run, in (group_index, stage_id) order."""
        ...

    async def due_for_poll(self, now: datetime, limit: int) -> list[StageRecord]:
        """SUSPENDED stages whose `due_at` has come and that no poller holds (a poller holds
        a stage while its `lease_expires_at` is in the future). Earliest due first."""
        ...

    async def next_poll_at(self, now: datetime) -> datetime | None:
        """The earliest `due_at` after `now` of any SUSPENDED stage (None when none is):
        when the next sleep wakes or the next poll is due, for a host to set its timer by,
        whichever process suspended it."""
        ...

    async def expired_leases(
        self, now: datetime, limit: int, *, holders: Sequence[str] = ()
    ) -> list[StageRecord]:
        """RUNNING stages whose lease expired, plus every RUNNING stage one of `holders`
        (worker ids) holds, whatever its expiry."""
        ...

    async def unstarted(
        self, enqueued_before: datetime, now: datetime, limit: int
    ) -> list[StageRecord]:
        """PENDING or RETRYING stages that are due (`due_at <= now`) and whose job was
        handed to the transport before `enqueued_before`: their delivery may be lost."""
        ...


class LogStore(Protocol):
    """Reading a run's log lines (they are written with `Changeset.logs`)."""

    async def for_run(
        self, run_id: str, *, after: int = 0, stage_id: str | None = None, limit: int = 1000
    ) -> list[LogLine]:
        """Up to `limit` of the run's lines whose id is above `after` (of `stage_id` only,
        when given), in id order: the order they were written. A caller that passes the
        last id it got as `after` next time gets every later line once (see `LogLine`)."""
        ...


class WorkerStore(Protocol):
    """The workers of the fleet: each one's beat, for `stagewise workers list` and for
    taking over the attempts of one that is gone."""

    async def save(self, worker: WorkerRecord) -> None:
        """Write every field of the worker's row (an upsert)."""
        ...

    async def find(self) -> list[WorkerRecord]:
        """Every worker that has a row, by worker id."""
        ...

    async def prune(self, before: datetime) -> int:
        """Delete the rows of workers not seen since `before`; returns how many."""
        ...


class OutboxStore(Protocol):
    """Delivering events: they are written with the changes that caused them (`Changeset`),
    and delivered from here."""

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

    async def events(self, run_id: str, *, after_seq: int = 0) -> list[EventRecord]:
        """The run's events after `after_seq`, in order."""
        ...


class IdempotencyStore(Protocol):
    """Idempotency keys: written with the effect they guard (`Changeset`), read here."""

    async def get(self, scope: str, key: str) -> IdempotencyRecord | None: ...

    async def delete(self, scope: str, keys: Sequence[str]) -> int:
        """Delete these keys of `scope` (those of purged runs); how many there were."""
        ...

    async def purge_expired(self, now: datetime) -> int:
        """Delete completed records past their `expires_at`; returns how many."""
        ...


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
    def workers(self) -> WorkerStore: ...

    @property
    def logs(self) -> LogStore: ...

    async def apply(self, changes: Changeset) -> None:
        """Write `changes` in this transaction (see `Changeset` for what refuses it). The
        adapter may hold the writes until the transaction's next statement or its commit;
        an error still surfaces inside the transaction, which then rolls back whole."""
        ...


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

    async def dequeue(
        self,
        *,
        worker_id: str,
        limit: int,
        lease_for: float,
        workflows: Sequence[tuple[str, str]] | None = None,
    ) -> list[JobMessage]:
        """Take up to `limit` available jobs (priority, then availability order), each
        invisible to other dequeuers until its lease expires or it is acked. With
        `workflows`, only jobs of those (workflow id, version) pairs (a job with no version:
        of those workflow ids): the others are left to workers that have them."""
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


def of_workflows(
    workflow_id: str, version: str | None, workflows: Sequence[tuple[str, str]] | None
) -> bool:
    """Whether a run or job of (`workflow_id`, `version`) is among `workflows` (None: any), as
    `RunStore.claim_pending` and `JobTransport.dequeue` filter them: one with no version
    recorded (made before versions were) goes with its workflow id."""
    if workflows is None:
        return True
    if version is None:
        return any(w == workflow_id for w, _ in workflows)
    return (workflow_id, version) in workflows
