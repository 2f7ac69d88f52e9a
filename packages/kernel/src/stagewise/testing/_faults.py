"""Fault injection: adapters that fail at the Nth operation, to prove recovery.

`FaultInjector` wraps any `Persistence`, `JobTransport`, `BlobStore`, `EventSink` (and
plugins) structurally and counts every operation that goes through them, in order, in one
shared count: a transaction's begin and commit, each store call inside it, each transport,
blob and sink call, each plugin delivery. At operation number `at` it injects one fault:

* `mode="raise"`: the operation fails *before* it takes effect with `InjectedFault` (a
  `TransientError`, like a dropped connection). Inside a transaction, or at its commit, the
  whole transaction rolls back. The process lives on and may retry.
* `mode="crash"`: the operation takes effect and then the process "dies" before the caller
  hears back: `SimulatedCrash` (a `BaseException`, so no `except Exception` in the kernel or a
  host mistakes it for an ordinary failure) is raised, and from then on every operation
  through these wrappers raises it too, without effect: a dead process writes nothing more.
  At a commit this is the hard case: the transaction *committed*, and nobody knows.
  Inside an open transaction it is a crash mid-transaction: nothing of it commits.

Recover the way a restarted process would: discard the kernel that saw the crash (cancel its
tasks) and build a fresh one on the *unwrapped* adapters, then let maintenance and
redelivery (`run_until_idle`) finish the work.

    faults = FaultInjector(at=17, mode="crash")
    kernel = create_kernel(
        persistence=faults.persistence(persistence),
        job_transport=faults.job_transport(queue),
        blob_store=faults.blob_store(blobs),
        event_sink=faults.event_sink(sink),
        ...
    )

Count first: run the scenario once with `FaultInjector()` (no fault) and read `count`, then
sweep `at` over `range(1, count + 1)`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Literal, TypeVar, cast

from stagewise._errors import TransientError
from stagewise._events import Event
from stagewise._plugins import Plugin
from stagewise._ports import (
    BlobStore,
    EventSink,
    IdempotencyStore,
    JobTransport,
    LogStore,
    OutboxStore,
    Persistence,
    RunStore,
    SignalStore,
    StageStore,
    StreamStore,
    Transaction,
    ValueStore,
    WorkerStore,
)
from stagewise._records import Changeset, JobMessage

T = TypeVar("T")

FaultMode = Literal["raise", "crash"]


class InjectedFault(TransientError):
    """The fault `FaultInjector` raised in place of operation number `index`."""

    def __init__(self, operation: str, index: int) -> None:
        super().__init__(f"injected fault at operation {index} ({operation})")
        self.operation = operation
        self.index = index


class SimulatedCrash(BaseException):
    """The process "died" at operation `index`: whatever it did there took effect, and
    nothing it tries afterwards does. A `BaseException`, so that handlers that catch
    `Exception` (to log and carry on) do not survive it."""

    def __init__(self, operation: str, index: int) -> None:
        super().__init__(f"simulated crash at operation {index} ({operation})")
        self.operation = operation
        self.index = index


class FaultInjector:
    """Counts operations through the adapters it wraps and fails number `at`.

    Attributes:
        operations: the name of every counted operation, in order (`"persistence.commit"`,
            `"runs.load"`, `"tx.apply"`, `"transport.dequeue"`, `"blobs.put"`, `"sink.publish"`,
            `"plugin:audit"`...).
        fired: the operation that faulted, once it has.
        crashed: True after a `crash` fault: the wrappers are dead.
    """

    def __init__(self, *, at: int | None = None, mode: FaultMode = "raise") -> None:
        if at is not None and at < 1:
            raise ValueError("operations are numbered from 1")
        if mode not in ("raise", "crash"):
            raise ValueError(f"mode must be 'raise' or 'crash', not {mode!r}")
        self.at = at
        self.mode: FaultMode = mode
        self.operations: list[str] = []
        self.fired: str | None = None
        self.crashed = False

    @property
    def count(self) -> int:
        """Operations counted so far."""
        return len(self.operations)

    # --- wrapping ------------------------------------------------------------------------

    def persistence(self, inner: Persistence) -> Persistence:
        return FaultyPersistence(self, inner)

    def job_transport(self, inner: JobTransport) -> FaultyJobTransport:
        return FaultyJobTransport(self, inner)

    def blob_store(self, inner: BlobStore) -> BlobStore:
        return FaultyBlobStore(self, inner)

    def event_sink(self, inner: EventSink) -> EventSink:
        return FaultyEventSink(self, inner)

    def plugin(self, plugin: Plugin) -> Plugin:
        """The same plugin, its every delivery counted as operation `plugin:<id>`."""
        name = f"plugin:{plugin.id}"

        async def handle(event: Event) -> None:
            await self.call(name, lambda: plugin.deliver(event))

        return Plugin(id=plugin.id, on=plugin.on, handle=handle)

    # --- counting ------------------------------------------------------------------------

    def enter(self, operation: str) -> bool:
        """Count `operation` before it runs. Raises `InjectedFault` when this is the one to
        fail in `raise` mode, `SimulatedCrash` when the process is already dead; returns
        True when the process is to die right after this operation takes effect."""
        if self.crashed:
            raise SimulatedCrash(operation, self.count)
        self.operations.append(operation)
        if self.count != self.at:
            return False
        self.fired = operation
        if self.mode == "raise":
            raise InjectedFault(operation, self.count)
        return True

    def die(self, operation: str) -> None:
        """The operation took effect; the caller never hears back."""
        self.crashed = True
        raise SimulatedCrash(operation, self.count)

    async def call(self, operation: str, run: Callable[[], Awaitable[T]]) -> T:
        crash = self.enter(operation)
        result = await run()
        if crash:
            self.die(operation)
        return result


def unwrap(tx: Transaction) -> Transaction:
    """The adapter's own transaction under a `FaultyTransaction` (adapters recognise their
    own transactions by type, e.g. for `JobTransport.joins`)."""
    while isinstance(tx, FaultyTransaction):
        tx = tx.inner
    return tx


# --- persistence -----------------------------------------------------------------------


class _StoreProxy:
    """Every coroutine method of the store it wraps, counted as `<store>.<method>`."""

    def __init__(self, injector: FaultInjector, name: str, inner: object) -> None:
        self._injector = injector
        self._name = name
        self._inner = inner

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._inner, attr)
        if not inspect.iscoroutinefunction(target):
            return target
        operation = f"{self._name}.{attr}"

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._injector.call(operation, lambda: target(*args, **kwargs))

        return call


class FaultyTransaction:
    """A transaction whose store calls are counted; `inner` is the adapter's own."""

    def __init__(self, injector: FaultInjector, inner: Transaction) -> None:
        self.inner = inner
        self._runs = cast(RunStore, _StoreProxy(injector, "runs", inner.runs))
        self._stages = cast(StageStore, _StoreProxy(injector, "stages", inner.stages))
        self._outbox = cast(OutboxStore, _StoreProxy(injector, "outbox", inner.outbox))
        self._idempotency = cast(
            IdempotencyStore, _StoreProxy(injector, "idempotency", inner.idempotency)
        )
        self._workers = cast(WorkerStore, _StoreProxy(injector, "workers", inner.workers))
        self._logs = cast(LogStore, _StoreProxy(injector, "logs", inner.logs))
        self._signals = cast(SignalStore, _StoreProxy(injector, "signals", inner.signals))
        self._values = cast(ValueStore, _StoreProxy(injector, "values", inner.values))
        self._streams = cast(StreamStore, _StoreProxy(injector, "streams", inner.streams))
        self._injector = injector

    @property
    def runs(self) -> RunStore:
        return self._runs

    @property
    def stages(self) -> StageStore:
        return self._stages

    @property
    def outbox(self) -> OutboxStore:
        return self._outbox

    @property
    def idempotency(self) -> IdempotencyStore:
        return self._idempotency

    @property
    def workers(self) -> WorkerStore:
        return self._workers

    @property
    def logs(self) -> LogStore:
        return self._logs

    @property
    def signals(self) -> SignalStore:
        return self._signals

    @property
    def values(self) -> ValueStore:
        return self._values

    @property
    def streams(self) -> StreamStore:
        return self._streams

    async def apply(self, changes: Changeset) -> None:
        await self._injector.call("tx.apply", lambda: self.inner.apply(changes))


class FaultyPersistence:
    """`Persistence` whose transactions count begin, every store call, and commit."""

    def __init__(self, injector: FaultInjector, inner: Persistence) -> None:
        self._injector = injector
        self.inner = inner

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        faults = self._injector
        crash_at_begin = faults.enter("persistence.begin")
        async with self.inner.transaction() as tx:
            if crash_at_begin:
                faults.die("persistence.begin")  # died inside BEGIN: rolls back
            yield FaultyTransaction(faults, tx)
            # `raise` here rolls the transaction back; `crash` lets it commit first.
            crash_at_commit = faults.enter("persistence.commit")
        if crash_at_commit:
            faults.die("persistence.commit")  # committed, and the caller never hears of it


# --- the other ports -------------------------------------------------------------------


class FaultyJobTransport:
    """`JobTransport` whose every call is counted as `transport.<method>`.

    `next_available_at` (for the time-skipping driver) passes through uncounted."""

    def __init__(self, injector: FaultInjector, inner: JobTransport) -> None:
        self._injector = injector
        self.inner = inner

    def joins(self, tx: Transaction) -> bool:
        return self.inner.joins(unwrap(tx))

    @staticmethod
    def _tx(tx: Transaction | None) -> Transaction | None:
        return None if tx is None else unwrap(tx)

    async def enqueue(self, jobs: Sequence[JobMessage], *, tx: Transaction | None = None) -> None:
        await self._injector.call(
            "transport.enqueue", lambda: self.inner.enqueue(jobs, tx=self._tx(tx))
        )

    async def dequeue(
        self,
        *,
        worker_id: str,
        limit: int,
        lease_for: float,
        workflows: Sequence[tuple[str, str]] | None = None,
    ) -> list[JobMessage]:
        return await self._injector.call(
            "transport.dequeue",
            lambda: self.inner.dequeue(
                worker_id=worker_id, limit=limit, lease_for=lease_for, workflows=workflows
            ),
        )

    async def ack(self, job_ids: Sequence[str], *, tx: Transaction | None = None) -> None:
        await self._injector.call("transport.ack", lambda: self.inner.ack(job_ids, tx=self._tx(tx)))

    async def retry_at(self, job_id: str, at: datetime) -> None:
        await self._injector.call("transport.retry_at", lambda: self.inner.retry_at(job_id, at))

    async def extend_lease(self, job_id: str, *, lease_for: float) -> bool:
        return await self._injector.call(
            "transport.extend_lease",
            lambda: self.inner.extend_lease(job_id, lease_for=lease_for),
        )

    async def release_expired(self, *, worker_id: str | None = None) -> int:
        return await self._injector.call(
            "transport.release_expired", lambda: self.inner.release_expired(worker_id=worker_id)
        )

    async def discard_run(self, run_id: str, *, tx: Transaction | None = None) -> int:
        return await self._injector.call(
            "transport.discard_run", lambda: self.inner.discard_run(run_id, tx=self._tx(tx))
        )

    async def next_available_at(self) -> datetime | None:
        """The wrapped transport's, uncounted (raises `AttributeError` if it has none)."""
        inner: Any = self.inner
        result: datetime | None = await inner.next_available_at()
        return result


class FaultyBlobStore:
    """`BlobStore` whose every call is counted as `blobs.<method>`."""

    def __init__(self, injector: FaultInjector, inner: BlobStore) -> None:
        self._injector = injector
        self.inner = inner

    async def put(self, key: str, data: bytes) -> None:
        await self._injector.call("blobs.put", lambda: self.inner.put(key, data))

    async def get(self, key: str) -> bytes:
        return await self._injector.call("blobs.get", lambda: self.inner.get(key))

    async def has(self, key: str) -> bool:
        return await self._injector.call("blobs.has", lambda: self.inner.has(key))

    async def delete(self, key: str) -> None:
        await self._injector.call("blobs.delete", lambda: self.inner.delete(key))

    async def list(self, prefix: str) -> list[str]:
        return await self._injector.call("blobs.list", lambda: self.inner.list(prefix))


class FaultyEventSink:
    """`EventSink` whose every publish is counted as `sink.publish`."""

    def __init__(self, injector: FaultInjector, inner: EventSink) -> None:
        self._injector = injector
        self.inner = inner

    async def publish(self, event: Event) -> None:
        await self._injector.call("sink.publish", lambda: self.inner.publish(event))
