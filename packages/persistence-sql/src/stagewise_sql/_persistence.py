"""The `Persistence` port over SQL: a unit of work and its stores.

Every store runs its statements on the transaction's one connection (`Link`). Ordering
matches the in-memory reference exactly; ties are broken by the same keys, and ids sort
byte-wise (see `_schema`). On PostgreSQL, `lock` and `claim_pending` take row locks
(`FOR UPDATE`, `SKIP LOCKED`); on SQLite the whole transaction already holds the write lock
(`BEGIN IMMEDIATE`), so the same statements are plain reads there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy import and_, bindparam, delete, func, or_, select

from stagewise._records import IdempotencyRecord, LogRecord, RunRecord, StageRecord
from stagewise._states import RunStatus, StageStatus
from stagewise_sql import _rows
from stagewise_sql._engine import Database, Link
from stagewise_sql._outbox import SqlOutboxStore
from stagewise_sql._schema import idempotency, logs, runs
from stagewise_sql._schema import stages as stages_t
from stagewise_sql._statements import Store, insert_ignore, time_param, upsert


class SqlTransaction:
    """One unit of work; its stores share the transaction's connection."""

    def __init__(self, db: Database, link: Link) -> None:
        self.db = db
        self.link = link
        self.runs = SqlRunStore(db, link)
        self.stages = SqlStageStore(db, link)
        self.outbox = SqlOutboxStore(db, link)
        self.idempotency = SqlIdempotencyStore(db, link)
        self.logs = SqlLogStore(db, link)


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
_RUN_LOCK = _RUN_BY_ID.with_for_update()
_RUN_LOCK_SKIP = _RUN_BY_ID.with_for_update(skip_locked=True)


class SqlRunStore(Store):
    """Transactions run the batch reads and collect the writes on their hot path (`_pg`,
    `_lite`); everything else, and single statements, go through SQLAlchemy."""

    async def insert(self, run: RunRecord) -> None:
        if not self._hot.writes.insert_run(run):
            await self._hot.flush()  # it meets the collected row and fails
            self._hot.writes.insert_run(run)

    async def get(self, run_id: str) -> RunRecord | None:
        row = (await self._link.execute(_RUN_BY_ID, {"run_id": run_id})).first()
        return None if row is None else _rows.run_from_row(row)

    async def lock(self, run_id: str, *, skip_locked: bool = False) -> RunRecord | None:
        stmt = _RUN_LOCK_SKIP if skip_locked else _RUN_LOCK
        row = (await self._link.execute(stmt, {"run_id": run_id})).first()
        return None if row is None else _rows.run_from_row(row)

    async def lock_many(self, run_ids: Sequence[str]) -> list[RunRecord]:
        ids = sorted(set(run_ids))
        if not ids:
            return []
        return await self._hot.lock_many(ids)

    async def lock_with_stages(
        self, run_ids: Sequence[str]
    ) -> list[tuple[RunRecord, list[StageRecord]]]:
        ids = sorted(set(run_ids))
        if not ids:
            return []
        return await self._hot.lock_with_stages(ids)

    async def save(self, run: RunRecord) -> None:
        await self.save_many([run])

    async def save_many(self, runs_: Sequence[RunRecord]) -> None:
        self._hot.writes.save_runs(runs_)

    async def claim_pending(self, limit: int) -> list[RunRecord]:
        return await self._hot.claim_pending(limit)

    async def find(
        self,
        *,
        status: RunStatus | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunRecord]:
        stmt = select(runs)
        if status is not None:
            stmt = stmt.where(runs.c.status == status.value)
        if workflow_id is not None:
            stmt = stmt.where(runs.c.workflow_id == workflow_id)
        stmt = stmt.order_by(runs.c.created_at.desc(), runs.c.run_id.desc())
        stmt = stmt.limit(limit).offset(offset)
        return [_rows.run_from_row(row) for row in await self._link.execute(stmt)]


# --- stages ------------------------------------------------------------------------------

_STAGES_OF_RUN = (
    select(stages_t)
    .where(stages_t.c.run_id == bindparam("run_id"))
    .order_by(stages_t.c.group_index, stages_t.c.stage_id)
)


class SqlStageStore(Store):
    async def insert_many(self, stages: Sequence[StageRecord]) -> None:
        if stages:
            values = [_rows.stage_values(s) for s in stages]
            await self._link.execute(stages_t.insert(), values)

    async def for_run(self, run_id: str) -> list[StageRecord]:
        result = await self._link.execute(_STAGES_OF_RUN, {"run_id": run_id})
        return [_rows.stage_from_row(row) for row in result]

    async def for_runs(self, run_ids: Sequence[str]) -> list[StageRecord]:
        ids = sorted(set(run_ids))
        if not ids:
            return []
        return await self._hot.for_runs(ids)

    async def save_many(self, stages: Sequence[StageRecord]) -> None:
        self._hot.writes.save_stages(stages)

    async def delete(self, run_id: str, stage_ids: Sequence[str]) -> None:
        if stage_ids:
            stmt = delete(stages_t).where(
                stages_t.c.run_id == run_id, stages_t.c.stage_id.in_(list(stage_ids))
            )
            await self._link.execute(stmt)

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

    async def expired_leases(
        self, now: datetime, limit: int, *, worker_id: str | None = None
    ) -> list[StageRecord]:
        t = time_param("now", now)
        expired = and_(stages_t.c.lease_expires_at.is_not(None), stages_t.c.lease_expires_at <= t)
        held = expired if worker_id is None else or_(expired, stages_t.c.worker_id == worker_id)
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

    async def insert(self, record: IdempotencyRecord) -> bool:
        # On PostgreSQL a concurrent insert of the same key waits on the unique index for
        # the other transaction, then reports the conflict (or inserts, if it rolled back).
        stmt = insert_ignore(idempotency, self._dialect)
        result = await self._link.execute(stmt, _rows.idempotency_values(record))
        return result.rowcount == 1

    async def save(self, record: IdempotencyRecord) -> None:
        stmt = upsert(idempotency, self._dialect)
        await self._link.execute(stmt, _rows.idempotency_values(record))

    async def purge_expired(self, now: datetime) -> int:
        stmt = delete(idempotency).where(
            idempotency.c.state == "completed", idempotency.c.expires_at <= time_param("now", now)
        )
        return (await self._link.execute(stmt)).rowcount


# --- logs --------------------------------------------------------------------------------


class SqlLogStore(Store):
    async def append(self, records: Sequence[LogRecord]) -> None:
        if records:
            await self._link.execute(logs.insert(), [_rows.log_values(r) for r in records])

    async def for_run(
        self, run_id: str, *, stage_id: str | None = None, limit: int = 1000
    ) -> list[LogRecord]:
        stmt = select(logs).where(logs.c.run_id == run_id)
        if stage_id is not None:
            stmt = stmt.where(logs.c.stage_id == stage_id)
        stmt = stmt.order_by(logs.c.id).limit(limit)
        return [_rows.log_from_row(row) for row in await self._link.execute(stmt)]
