"""In-memory persistence whose transactions really commit or roll back.

One transaction runs at a time (an `asyncio.Lock`), which makes every transaction
serializable: row locks and SKIP LOCKED are trivially honoured. Tables are copied on first
write inside a transaction and swapped in on commit, so an exception anywhere in the block
leaves no trace. Records are immutable, so a shallow copy is a full snapshot.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from stagewise._errors import ConcurrentUpdateError, DuplicateRecordError
from stagewise._ports import of_workflows
from stagewise._query import RunFilter
from stagewise._records import (
    Changeset,
    Delivery,
    EventRecord,
    IdempotencyRecord,
    LogRecord,
    RunRecord,
    RunValueRecord,
    SignalRecord,
    StageRecord,
    StreamItemRecord,
    WorkerRecord,
    with_stages,
)
from stagewise._states import RunStatus, StageStatus
from stagewise.testing import _memory_purge
from stagewise.testing._memory_logs import MemoryLogs
from stagewise.testing._memory_outbox import MemoryOutbox
from stagewise.testing._memory_signals import MemorySignals, MemoryStreams, MemoryValues

_TABLES = (
    "runs",
    "stages",
    "events",
    "deliveries",
    "idempotency",
    "logs",
    "workers",
    "signals",
    "values",
    "streams",
)


class _State:
    def __init__(self) -> None:
        self.runs: dict[str, RunRecord] = {}
        self.stages: dict[tuple[str, str], StageRecord] = {}
        self.events: dict[str, EventRecord] = {}
        self.deliveries: dict[tuple[str, str], Delivery] = {}
        self.idempotency: dict[tuple[str, str], IdempotencyRecord] = {}
        self.logs: dict[int, LogRecord] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.signals: dict[tuple[str, int], SignalRecord] = {}
        self.values: dict[tuple[str, str], RunValueRecord] = {}
        self.streams: dict[tuple[str, str, int], StreamItemRecord] = {}


class MemoryTransaction:
    """A unit of work over `InMemoryPersistence`; its stores are attributes."""

    def __init__(self, owner: InMemoryPersistence) -> None:
        self.owner = owner
        self._base = owner._state
        self._copies: dict[str, dict[Any, Any]] = {}
        self._on_commit: list[Callable[[], None]] = []
        self.failed: Exception | None = None
        self.runs = _Runs(self)
        self.stages = _Stages(self)
        self.outbox = MemoryOutbox(self)
        self.idempotency = _Idempotency(self)
        self.workers = _Workers(self)
        self.logs = MemoryLogs(self)
        self.signals = MemorySignals(self)
        self.values = MemoryValues(self)
        self.streams = MemoryStreams(self)

    def read(self, table: str) -> dict[Any, Any]:
        copy = self._copies.get(table)
        return copy if copy is not None else getattr(self._base, table)

    def write(self, table: str) -> dict[Any, Any]:
        if table not in self._copies:
            self._copies[table] = dict(getattr(self._base, table))
        return self._copies[table]

    async def apply(self, changes: Changeset) -> None:
        """Check everything first, then write: a changeset that fails writes nothing, and
        its transaction commits nothing (even if the block catches the error)."""
        try:
            self._refuse(changes)
        except Exception as exc:
            self.failed = self.failed or exc
            raise
        if changes.new_runs or changes.runs:
            runs = self.write("runs")
            runs.update((r.run_id, r) for r in changes.new_runs)
            runs.update((w.run.run_id, w.run) for w in changes.runs)
        if changes.stages or changes.deleted_stages:
            stages = self.write("stages")
            for key in changes.deleted_stages:
                stages.pop(key, None)
            stages.update(((s.run_id, s.stage_id), s) for s in changes.stages)
        if changes.events:
            self.write("events").update((e.event_id, e) for e in changes.events)
        if changes.deliveries:
            deliveries = self.write("deliveries")
            deliveries.update(((d.event_id, d.consumer), d) for d in changes.deliveries)
        if changes.logs:
            logs = self.write("logs")
            for record in changes.logs:
                logs[self.owner.next_log_id()] = record
        if changes.idempotency:
            keys = self.write("idempotency")
            keys.update(((k.scope, k.key), k) for k in changes.idempotency)
        if changes.signals:
            self.write("signals").update(((s.run_id, s.seq), s) for s in changes.signals)
        if changes.values:
            self.write("values").update(((v.run_id, v.key), v) for v in changes.values)
        if changes.stream_items:
            items = self.write("streams")
            items.update(((i.run_id, i.key, i.offset), i) for i in changes.stream_items)

    def _refuse(self, changes: Changeset) -> None:
        """Raise what the changeset breaks: a key that exists, a version that moved."""
        runs = self.read("runs")
        inserts: list[tuple[str, list[Any], str]] = [
            ("run", [r.run_id for r in changes.new_runs], "runs"),
            ("event", [e.event_id for e in changes.events], "events"),
            ("delivery", [(d.event_id, d.consumer) for d in changes.deliveries], "deliveries"),
            ("idempotency key", [(k.scope, k.key) for k in changes.idempotency], "idempotency"),
            ("stream item", [(i.run_id, i.key, i.offset) for i in changes.stream_items], "streams"),
        ]
        for what, keys, name in inserts:
            if not keys:
                continue
            table = self.read(name)
            taken = next((k for k in keys if k in table), None)
            if taken is None and len(set(keys)) < len(keys):  # named twice in this changeset
                taken = next(k for i, k in enumerate(keys) if k in keys[:i])
            if taken is not None:
                raise DuplicateRecordError(f"{what} {taken!r} exists")
        stale = [
            w.run.run_id
            for w in changes.runs
            if w.run.run_id not in runs or runs[w.run.run_id].version != w.expected_version
        ]
        if stale:
            raise ConcurrentUpdateError(stale)

    def on_commit(self, action: Callable[[], None]) -> None:
        """Run `action` when (and only if) this transaction commits."""
        self._on_commit.append(action)

    def _commit(self) -> None:
        for table, copy in self._copies.items():
            setattr(self._base, table, copy)
        for action in self._on_commit:
            action()


class InMemoryPersistence:
    """The `Persistence` port in memory. Transactions are serializable and roll back."""

    def __init__(self) -> None:
        self._state = _State()
        self._lock = asyncio.Lock()
        self._log_seq = 0
        self.transactions = 0
        """Committed transactions so far (for tests that count round trips)."""

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open right now (tests check user code runs outside)."""
        return self._lock.locked()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTransaction]:
        async with self._lock:
            tx = MemoryTransaction(self)
            yield tx
            if tx.failed is not None:
                raise tx.failed
            tx._commit()
            self.transactions += 1

    # Read-only views for assertions in tests.
    def snapshot_runs(self) -> list[RunRecord]:
        return list(self._state.runs.values())

    def snapshot_stages(self, run_id: str | None = None) -> list[StageRecord]:
        return [s for s in self._state.stages.values() if run_id is None or s.run_id == run_id]

    def snapshot_events(self, run_id: str | None = None) -> list[EventRecord]:
        events = [e for e in self._state.events.values() if run_id is None or e.run_id == run_id]
        return sorted(events, key=lambda e: (e.run_id, e.seq))

    def snapshot_deliveries(self) -> list[Delivery]:
        return list(self._state.deliveries.values())

    def snapshot_signals(self) -> list[SignalRecord]:
        return [self._state.signals[k] for k in sorted(self._state.signals)]

    def snapshot_streams(self) -> list[StreamItemRecord]:
        """Every stream item, by run, key and offset."""
        return [self._state.streams[k] for k in sorted(self._state.streams)]

    def snapshot_logs(self, run_id: str | None = None) -> list[LogRecord]:
        """Log lines in the order they were written."""
        return [
            r for _, r in sorted(self._state.logs.items()) if run_id is None or r.run_id == run_id
        ]

    def next_log_id(self) -> int:
        self._log_seq += 1
        return self._log_seq


class _Store:
    def __init__(self, tx: MemoryTransaction) -> None:
        self._tx = tx


class _Runs(_Store):
    async def load(
        self, run_ids: Sequence[str], *, skip_locked: bool = False
    ) -> list[tuple[RunRecord, list[StageRecord]]]:
        table = self._tx.read("runs")
        runs = [table[r] for r in sorted(set(run_ids)) if r in table]
        wanted = {r.run_id for r in runs}
        stages = [s for s in self._tx.read("stages").values() if s.run_id in wanted]
        stages.sort(key=lambda s: (s.group_index, s.stage_id))
        return with_stages(runs, stages)

    async def claim_pending(
        self, limit: int, *, workflows: Sequence[tuple[str, str]] | None = None
    ) -> list[RunRecord]:
        pending = [
            r
            for r in self._tx.read("runs").values()
            if r.status is RunStatus.PENDING
            and of_workflows(r.workflow_id, r.workflow_version, workflows)
        ]
        pending.sort(key=lambda r: (-r.priority, r.created_at, r.run_id))
        return pending[:limit]

    async def get(self, run_id: str) -> RunRecord | None:
        return self._tx.read("runs").get(run_id)

    async def find(
        self,
        where: RunFilter | None = None,
        *,
        before: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        where = where or RunFilter()
        runs = [
            r
            for r in self._tx.read("runs").values()
            if where.matches(r) and (before is None or (r.created_at, r.run_id) < before)
        ]
        runs.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        return runs[:limit]

    async def past_deadline(self, now: datetime, limit: int) -> list[RunRecord]:
        late = [r for r in self._active() if r.deadline is not None and r.deadline <= now]
        return sorted(late, key=lambda r: (r.deadline, r.run_id))[:limit]

    async def next_deadline(self, now: datetime) -> datetime | None:
        ahead = [r.deadline for r in self._active() if r.deadline and r.deadline > now]
        return min(ahead, default=None)

    def _active(self) -> list[RunRecord]:
        active = (RunStatus.PENDING, RunStatus.RUNNING)
        return [r for r in self._tx.read("runs").values() if r.status in active]

    async def finished_before(self, before: datetime, limit: int) -> list[RunRecord]:
        return await _memory_purge.finished_before(self._tx, before, limit)

    async def purge(self, run_ids: Sequence[str]) -> int:
        return _memory_purge.purge(self._tx, run_ids)

    async def active_versions(self) -> list[tuple[str, str | None, int]]:
        counts = Counter(
            (r.workflow_id, r.workflow_version)
            for r in self._tx.read("runs").values()
            if not r.status.is_terminal
        )
        ordered = sorted(counts.items(), key=lambda c: (c[0][0], c[0][1] or ""))
        return [(wf, version, n) for (wf, version), n in ordered]


class _Stages(_Store):
    async def for_run(self, run_id: str) -> list[StageRecord]:
        rows = [s for s in self._tx.read("stages").values() if s.run_id == run_id]
        rows.sort(key=lambda s: (s.group_index, s.stage_id))
        return rows

    async def due_for_poll(self, now: datetime, limit: int) -> list[StageRecord]:
        rows = [
            s
            for s in self._tx.read("stages").values()
            if s.status is StageStatus.SUSPENDED
            and s.due_at is not None
            and s.due_at <= now
            and (s.lease_expires_at is None or s.lease_expires_at <= now)
        ]
        rows.sort(key=lambda s: (s.due_at, s.run_id, s.stage_id))
        return rows[:limit]

    async def next_poll_at(self, now: datetime) -> datetime | None:
        rows = self._tx.read("stages").values()
        due = [s.due_at for s in rows if s.status is StageStatus.SUSPENDED and s.due_at]
        return min((d for d in due if d > now), default=None)

    async def expired_leases(
        self, now: datetime, limit: int, *, holders: Sequence[str] = ()
    ) -> list[StageRecord]:
        rows = [
            s
            for s in self._tx.read("stages").values()
            if s.status is StageStatus.RUNNING
            and (
                (s.lease_expires_at is not None and s.lease_expires_at <= now)
                or (s.worker_id is not None and s.worker_id in holders)
            )
        ]
        rows.sort(key=lambda s: (s.lease_expires_at or now, s.run_id, s.stage_id))
        return rows[:limit]

    async def unstarted(
        self, enqueued_before: datetime, now: datetime, limit: int
    ) -> list[StageRecord]:
        rows = [
            s
            for s in self._tx.read("stages").values()
            if s.status in (StageStatus.PENDING, StageStatus.RETRYING)
            and s.enqueued_at is not None
            and s.enqueued_at < enqueued_before
            and (s.due_at is None or s.due_at <= now)
        ]
        rows.sort(key=lambda s: (s.enqueued_at, s.run_id, s.stage_id))
        return rows[:limit]


class _Idempotency(_Store):
    async def get(self, scope: str, key: str) -> IdempotencyRecord | None:
        return self._tx.read("idempotency").get((scope, key))

    async def delete(self, scope: str, keys: Sequence[str]) -> int:
        table = self._tx.write("idempotency")
        return sum(table.pop((scope, key), None) is not None for key in keys)

    async def purge_expired(self, now: datetime) -> int:
        table = self._tx.write("idempotency")
        expired = [k for k, r in table.items() if r.state == "completed" and r.expires_at <= now]
        for k in expired:
            del table[k]
        return len(expired)


class _Workers(_Store):
    async def save(self, worker: WorkerRecord) -> None:
        self._tx.write("workers")[worker.worker_id] = worker

    async def find(self) -> list[WorkerRecord]:
        return [w for _, w in sorted(self._tx.read("workers").items())]

    async def prune(self, before: datetime) -> int:
        table = self._tx.write("workers")
        old = [k for k, w in table.items() if w.last_seen_at < before]
        for k in old:
            del table[k]
        return len(old)
