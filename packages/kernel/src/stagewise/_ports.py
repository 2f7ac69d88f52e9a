"""The ports: everything the kernel needs from the outside world, as small Protocols.

The kernel does no I/O of its own. It reads time from a `Clock`, makes ids with `IdGenerator`,
keeps state through `Persistence`, hands jobs to a `JobTransport`, stores large payloads in a
`BlobStore`, publishes events to an `EventSink`, leaves wake-up hints with a `Scheduler` and
hears of other processes' commits from a `ChangeFeed`.
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

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from stagewise._persistence_port import (
    IdempotencyStore as IdempotencyStore,
)
from stagewise._persistence_port import (
    LogStore as LogStore,
)
from stagewise._persistence_port import (
    OutboxStore as OutboxStore,
)
from stagewise._persistence_port import (
    Persistence as Persistence,
)
from stagewise._persistence_port import (
    RunStore as RunStore,
)
from stagewise._persistence_port import (
    SignalStore as SignalStore,
)
from stagewise._persistence_port import (
    StageStore as StageStore,
)
from stagewise._persistence_port import (
    StreamStore as StreamStore,
)
from stagewise._persistence_port import (
    Transaction as Transaction,
)
from stagewise._persistence_port import (
    ValueStore as ValueStore,
)
from stagewise._persistence_port import (
    WorkerStore as WorkerStore,
)
from stagewise._records import (
    JobMessage,
)

if TYPE_CHECKING:
    from stagewise._events import Event


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


class ChangeFeed(Protocol):
    """Hints that another process committed a change to a run: its row (a stage moved, it
    ended), a value it published or an item of its stream. Readers that wait
    (`wait_for_run`, `get_event`, `read_stream`) read again on a hint instead of at their
    next poll; a hint lost, or one for nothing, only costs that read's latency or a read."""

    async def watch(self, run_id: str, hint: Callable[[], None]) -> Callable[[], None]:
        """Call `hint()` after each such commit until the returned function is called.
        Returns once the watch is in place: a change committed after that is hinted."""
        ...


class NoChangeFeed:
    """No hints (a backend no other process reaches, such as the in-memory one): readers
    hear of this process's commits directly and of nothing else."""

    async def watch(self, run_id: str, hint: Callable[[], None]) -> Callable[[], None]:
        return _nothing


def _nothing() -> None:
    return None


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
