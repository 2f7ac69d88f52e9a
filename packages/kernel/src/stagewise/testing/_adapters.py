"""In-memory job queue, blob store, event sinks, scheduler and ids for tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from stagewise._errors import BlobNotFoundError
from stagewise._ports import Clock, Transaction, WakeCommand, of_workflows
from stagewise._records import JobMessage
from stagewise.testing._memory import InMemoryPersistence, MemoryTransaction

if TYPE_CHECKING:
    from stagewise._events import Event


@dataclass(frozen=True, slots=True)
class _QueuedJob:
    message: JobMessage
    seq: int
    worker_id: str | None = None
    lease_expires_at: datetime | None = None


class InMemoryJobQueue:
    """The `JobTransport` port in memory; leases expire on the injected clock.

    Pass the `InMemoryPersistence` to make it behave like a transport in the same database:
    enqueue, ack and discard inside a kernel transaction take effect only if it commits.
    Without it, it behaves like an external queue that the kernel feeds after commit.
    """

    def __init__(self, clock: Clock, persistence: InMemoryPersistence | None = None) -> None:
        self._clock = clock
        self._persistence = persistence
        self._jobs: dict[str, _QueuedJob] = {}
        self._seq = itertools.count()
        self.enqueued_total = 0
        self.dequeued_total = 0

    def joins(self, tx: Transaction) -> bool:
        return (
            self._persistence is not None
            and isinstance(tx, MemoryTransaction)
            and tx.owner is self._persistence
        )

    def _defer(self, tx: Transaction | None, action: Callable[[], None]) -> None:
        if tx is not None and self.joins(tx):
            assert isinstance(tx, MemoryTransaction)
            tx.on_commit(action)
        else:
            action()

    async def enqueue(self, jobs: Sequence[JobMessage], *, tx: Transaction | None = None) -> None:
        def apply() -> None:
            for job in jobs:
                self._jobs[job.job_id] = _QueuedJob(message=job, seq=next(self._seq))
                self.enqueued_total += 1

        self._defer(tx, apply)

    def _visible(self, job: _QueuedJob, now: datetime) -> bool:
        if job.message.available_at > now:
            return False
        return job.lease_expires_at is None or job.lease_expires_at <= now

    async def dequeue(
        self,
        *,
        worker_id: str,
        limit: int,
        lease_for: float,
        workflows: Sequence[tuple[str, str]] | None = None,
    ) -> list[JobMessage]:
        now = self._clock.now()
        ready = [
            j
            for j in self._jobs.values()
            if self._visible(j, now)
            and of_workflows(j.message.workflow_id, j.message.workflow_version, workflows)
        ]
        ready.sort(key=lambda j: (-j.message.priority, j.message.available_at, j.seq))
        out = []
        expires = now + timedelta(seconds=lease_for)
        for job in ready[:limit]:
            self._jobs[job.message.job_id] = replace(
                job, worker_id=worker_id, lease_expires_at=expires
            )
            out.append(replace(job.message, lease_expires_at=expires))
        self.dequeued_total += len(out)
        return out

    async def ack(self, job_ids: Sequence[str], *, tx: Transaction | None = None) -> None:
        def apply() -> None:
            for job_id in job_ids:
                self._jobs.pop(job_id, None)

        self._defer(tx, apply)

    async def retry_at(self, job_id: str, at: datetime) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            self._jobs[job_id] = replace(
                job,
                message=replace(job.message, available_at=at),
                worker_id=None,
                lease_expires_at=None,
            )

    async def extend_lease(self, job_id: str, *, lease_for: float) -> bool:
        job = self._jobs.get(job_id)
        if job is None:
            return False
        expires = self._clock.now() + timedelta(seconds=lease_for)
        self._jobs[job_id] = replace(job, lease_expires_at=expires)
        return True

    async def release_expired(self, *, worker_id: str | None = None) -> int:
        now = self._clock.now()
        released = 0
        for job_id, job in list(self._jobs.items()):
            if job.lease_expires_at is None:
                continue
            if job.lease_expires_at <= now or (
                worker_id is not None and job.worker_id == worker_id
            ):
                self._jobs[job_id] = replace(job, worker_id=None, lease_expires_at=None)
                released += 1
        return released

    async def discard_run(self, run_id: str, *, tx: Transaction | None = None) -> int:
        doomed = [j for j, job in self._jobs.items() if job.message.run_id == run_id]

        def apply() -> None:
            for job_id in doomed:
                self._jobs.pop(job_id, None)

        self._defer(tx, apply)
        return len(doomed)

    # For tests and the time-skipping driver.
    def jobs(self) -> list[JobMessage]:
        """Every job still in the queue (leased or not)."""
        return [j.message for j in sorted(self._jobs.values(), key=lambda j: j.seq)]

    async def next_available_at(self) -> datetime | None:
        """When the next job becomes deliverable (availability or lease expiry)."""
        times = [
            max(j.message.available_at, j.lease_expires_at or j.message.available_at)
            for j in self._jobs.values()
        ]
        return min(times) if times else None

    def __len__(self) -> int:
        return len(self._jobs)


class InMemoryBlobStore:
    """The `BlobStore` port in memory."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes) -> None:
        self._blobs[key] = bytes(data)

    async def get(self, key: str) -> bytes:
        try:
            return self._blobs[key]
        except KeyError:
            raise BlobNotFoundError(key) from None

    async def has(self, key: str) -> bool:
        return key in self._blobs

    async def delete(self, key: str) -> None:
        self._blobs.pop(key, None)

    async def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self._blobs if k.startswith(prefix))


class CollectingEventSink:
    """An `EventSink` that keeps every event it is given.

    `fail` may be set to a callable that gets each event and returns True to refuse it
    (raise a `PluginDeliveryError`), to test retries and dead-lettering.
    """

    def __init__(self, fail: Callable[[Event], bool] | None = None) -> None:
        self.events: list[Event] = []
        self.fail = fail
        self.refused = 0

    async def publish(self, event: Event) -> None:
        if self.fail is not None and self.fail(event):
            from stagewise._errors import PluginDeliveryError

            self.refused += 1
            raise PluginDeliveryError(f"sink refused {event.type} #{event.seq}")
        self.events.append(event)

    def of_run(self, run_id: str) -> list[Event]:
        return [e for e in self.events if e.run_id == run_id]

    def types(self, run_id: str | None = None) -> list[str]:
        return [e.type for e in self.events if run_id is None or e.run_id == run_id]


class NoopEventSink:
    """An `EventSink` that drops everything."""

    async def publish(self, event: Event) -> None:
        return None


class NoopScheduler:
    """A `Scheduler` that ignores hints (maintenance passes find the work anyway)."""

    async def wake(self, command: WakeCommand, at: datetime) -> None:
        return None


class RecordingScheduler:
    """A `Scheduler` that remembers every hint, for tests and the time-skipping driver."""

    def __init__(self) -> None:
        self.hints: list[tuple[WakeCommand, datetime]] = []

    async def wake(self, command: WakeCommand, at: datetime) -> None:
        self.hints.append((command, at))

    def next_after(self, now: datetime, command: WakeCommand | None = None) -> datetime | None:
        """The earliest hinted time strictly after `now` (for `command`, or any)."""
        future = [at for c, at in self.hints if at > now and command in (None, c)]
        return min(future) if future else None

    def prune(self, now: datetime) -> None:
        self.hints = [(c, at) for c, at in self.hints if at > now]


class SequentialIds:
    """Readable, deterministic ids: `id-000001`, `id-000002`, ..."""

    def __init__(self, prefix: str = "id") -> None:
        self._prefix = prefix
        self._counter = itertools.count(1)

    def new_id(self) -> str:
        return f"{self._prefix}-{next(self._counter):06d}"
