"""The `Persistence` port over SQL: a unit of work and its stores.

Every store runs its statements on the transaction's one connection (`UnitConnection`): the reads of
the hot path (`load`, `claim_pending`) and the changeset (`apply`) on its driver (`_pg`,
`_lite`), everything else through SQLAlchemy. Ordering matches the in-memory reference
exactly; ties are broken by the same keys, and ids sort byte-wise (see `_schema`). On
PostgreSQL, `load` and `claim_pending` take row locks (`FOR UPDATE`, `SKIP LOCKED`); on
SQLite the whole transaction already holds the write lock (`BEGIN IMMEDIATE`), so the same
statements are plain reads there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select, text

from stagewise._query import RunFilter
from stagewise._records import Changeset, IdempotencyRecord, RunRecord, StageRecord, WorkerRecord
from stagewise._states import RunStatus, StageStatus
from stagewise_sql import _rows
from stagewise_sql._engine import Database, UnitConnection
from stagewise_sql._finding import (
    SqlLogStore,
    SqlSignalStore,
    SqlStreamStore,
    SqlValueStore,
    find_statement,
)
from stagewise_sql._outbox import SqlOutboxStore
from stagewise_sql._purging import finished_before_statement, purge_statement
from stagewise_sql._schema import ACTIVE_WITH_DEADLINE, idempotency, runs
from stagewise_sql._schema import stages as stages_t
from stagewise_sql._schema import workers as workers_t
from stagewise_sql._statements import Store, time_param, upsert


class SqlTransaction:
    """One unit of work; its stores share the transaction's connection."""

    def __init__(self, db: Database, link: UnitConnection) -> None:
        self.db = db
        self.link = link
        self.runs = SqlRunStore(db, link)
        self.stages = SqlStageStore(db, link)
        self.outbox = SqlOutboxStore(db, link)
        self.idempotency = SqlIdempotencyStore(db, link)
        self.workers = SqlWorkerStore(db, link)
        self.logs = SqlLogStore(db, link)
        self.signals = SqlSignalStore(db, link)
        self.values = SqlValueStore(db, link)
        self.streams = SqlStreamStore(db, link)

    async def apply(self, changes: Changeset) -> None:
        """Hold `changes` to go out with the transaction's next statement or its commit
        (after a changeset held before, which goes first)."""
        path = self.runs.path
        if not path.writes.hold(changes):
            await path.flush()
            path.writes.hold(changes)


class SqlPersistence:
    """The `Persistence` port on SQLite or PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlTransaction]:
        """A unit of work: commit on normal exit, roll back entirely on an exception.

        Raises:
            TransientError: the database could not be reached or the transaction could not
                start after a few retries, or it failed in a way worth retrying.
            PersistenceError: the database refused the work (schema, permissions...).
        """
        async with self.db.transaction() as link:
            yield SqlTransaction(self.db, link)


# --- runs --------------------------------------------------------------------------------

_RUN_BY_ID = select(runs).where(runs.c.run_id == bindparam("run_id"))


class SqlRunStore(Store):
    """The hot path's reads run on the transaction's driver (`_pg`, `_lite`); listings
    through SQLAlchemy."""

    async def load(
        self, run_ids: Sequence[str], *, skip_locked: bool = False
    ) -> list[tuple[RunRecord, list[StageRecord]]]:
        ids = sorted(set(run_ids))
        if not ids:
            return []
        return await self.path.load(ids, skip_locked=skip_locked)

    async def claim_pending(
        self, limit: int, *, workflows: Sequence[tuple[str, str]] | None = None
    ) -> list[RunRecord]:
        return await self.path.claim_pending(limit, workflows=workflows)

    async def get(self, run_id: str) -> RunRecord | None:
        row = (await self._link.execute(_RUN_BY_ID, {"run_id": run_id})).first()
        return None if row is None else _rows.run_from_row(row)

    async def find(
        self,
        where: RunFilter | None = None,
        *,
        before: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        stmt = find_statement(where or RunFilter(), before, limit, self._dialect)
        return [_rows.run_from_row(row) for row in await self._link.execute(stmt)]

    async def past_deadline(self, now: datetime, limit: int) -> list[RunRecord]:
        stmt = (
            select(runs)
            .where(_ACTIVE_WITH_DEADLINE, runs.c.deadline <= time_param("now", now))
            .order_by(runs.c.deadline, runs.c.run_id)
            .limit(limit)
        )
        return [_rows.run_from_row(row) for row in await self._link.execute(stmt)]

    async def next_deadline(self, now: datetime) -> datetime | None:
        stmt = select(func.min(runs.c.deadline)).where(
            _ACTIVE_WITH_DEADLINE, runs.c.deadline > time_param("now", now)
        )
        value: datetime | None = (await self._link.execute(stmt)).scalar()
        return value

    async def finished_before(self, before: datetime, limit: int) -> list[RunRecord]:
        stmt = finished_before_statement(before, limit, self._dialect)
        return [_rows.run_from_row(row) for row in await self._link.execute(stmt)]

    async def purge(self, run_ids: Sequence[str]) -> int:
        if not run_ids:
            return 0
        return (await self._link.execute(purge_statement(run_ids))).rowcount

    async def active_versions(self) -> list[tuple[str, str | None, int]]:
        stmt = (
            select(runs.c.workflow_id, runs.c.workflow_version, func.count())
            .where(runs.c.status.in_([RunStatus.PENDING.value, RunStatus.RUNNING.value]))
            .group_by(runs.c.workflow_id, runs.c.workflow_version)
            .order_by(runs.c.workflow_id, func.coalesce(runs.c.workflow_version, ""))
        )
        rows: list[Any] = list(await self._link.execute(stmt))
        return [(str(r[0]), None if r[1] is None else str(r[1]), int(r[2])) for r in rows]


# The partial index's own predicate, as literal SQL: a planner uses a partial index only
# for a query whose WHERE implies the index's, which bound parameters cannot show.
_ACTIVE_WITH_DEADLINE = text(ACTIVE_WITH_DEADLINE)


# --- stages ------------------------------------------------------------------------------

_STAGES_OF_RUN = (
    select(stages_t)
    .where(stages_t.c.run_id == bindparam("run_id"))
    .order_by(stages_t.c.group_index, stages_t.c.stage_id)
)


class SqlStageStore(Store):
    async def for_run(self, run_id: str) -> list[StageRecord]:
        result = await self._link.execute(_STAGES_OF_RUN, {"run_id": run_id})
        return [_rows.stage_from_row(row) for row in result]

    async def due_for_poll(self, now: datetime, limit: int) -> list[StageRecord]:
        t = time_param("now", now)
        stmt = (
            select(stages_t)
            .where(
                stages_t.c.status == StageStatus.SUSPENDED.value,
                stages_t.c.due_at.is_not(None),
                stages_t.c.due_at <= t,
                or_(stages_t.c.lease_expires_at.is_(None), stages_t.c.lease_expires_at <= t),
            )
            .order_by(stages_t.c.due_at, stages_t.c.run_id, stages_t.c.stage_id)
            .limit(limit)
        )
        return [_rows.stage_from_row(row) for row in await self._link.execute(stmt)]

    async def next_poll_at(self, now: datetime) -> datetime | None:
        # MIN over the partial index of suspended stages: one index probe (min() keeps
        # the column's type, so the value comes back timezone-aware like any other).
        stmt = select(func.min(stages_t.c.due_at)).where(
            stages_t.c.status == StageStatus.SUSPENDED.value,
            stages_t.c.due_at > time_param("now", now),
        )
        value: datetime | None = (await self._link.execute(stmt)).scalar()
        return value

    async def expired_leases(
        self, now: datetime, limit: int, *, holders: Sequence[str] = ()
    ) -> list[StageRecord]:
        t = time_param("now", now)
        expired = and_(stages_t.c.lease_expires_at.is_not(None), stages_t.c.lease_expires_at <= t)
        held = or_(expired, stages_t.c.worker_id.in_(list(holders))) if holders else expired
        stmt = (
            select(stages_t)
            .where(stages_t.c.status == StageStatus.RUNNING.value, held)
            .order_by(
                func.coalesce(stages_t.c.lease_expires_at, time_param("now_order", now)),
                stages_t.c.run_id,
                stages_t.c.stage_id,
            )
            .limit(limit)
        )
        return [_rows.stage_from_row(row) for row in await self._link.execute(stmt)]

    async def unstarted(
        self, enqueued_before: datetime, now: datetime, limit: int
    ) -> list[StageRecord]:
        t = time_param("now", now)
        stmt = (
            select(stages_t)
            .where(
                stages_t.c.status.in_([StageStatus.PENDING.value, StageStatus.RETRYING.value]),
                stages_t.c.enqueued_at.is_not(None),
                stages_t.c.enqueued_at < time_param("before", enqueued_before),
                or_(stages_t.c.due_at.is_(None), stages_t.c.due_at <= t),
            )
            .order_by(stages_t.c.enqueued_at, stages_t.c.run_id, stages_t.c.stage_id)
            .limit(limit)
        )
        return [_rows.stage_from_row(row) for row in await self._link.execute(stmt)]


# --- idempotency -------------------------------------------------------------------------

_IDEMPOTENCY_BY_KEY = select(idempotency).where(
    idempotency.c.scope == bindparam("scope"), idempotency.c.key == bindparam("key")
)


class SqlIdempotencyStore(Store):
    async def get(self, scope: str, key: str) -> IdempotencyRecord | None:
        result = await self._link.execute(_IDEMPOTENCY_BY_KEY, {"scope": scope, "key": key})
        row = result.first()
        return None if row is None else _rows.idempotency_from_row(row)

    async def delete(self, scope: str, keys: Sequence[str]) -> int:
        stmt = delete(idempotency).where(
            idempotency.c.scope == scope, idempotency.c.key.in_(list(keys))
        )
        return (await self._link.execute(stmt)).rowcount

    async def purge_expired(self, now: datetime) -> int:
        stmt = delete(idempotency).where(
            idempotency.c.state == "completed", idempotency.c.expires_at <= time_param("now", now)
        )
        return (await self._link.execute(stmt)).rowcount


# --- workers -----------------------------------------------------------------------------


class SqlWorkerStore(Store):
    async def save(self, worker: WorkerRecord) -> None:
        stmt = upsert(workers_t, self._dialect)
        await self._link.execute(stmt, _rows.worker_values(worker))

    async def find(self) -> list[WorkerRecord]:
        stmt = select(workers_t).order_by(workers_t.c.worker_id)
        return [_rows.worker_from_row(row) for row in await self._link.execute(stmt)]

    async def prune(self, before: datetime) -> int:
        stmt = delete(workers_t).where(workers_t.c.last_seen_at < time_param("before", before))
        return (await self._link.execute(stmt)).rowcount
