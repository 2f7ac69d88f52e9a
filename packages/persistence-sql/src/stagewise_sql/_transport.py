"""The `JobTransport` port as a jobs table in the same database as the persistence.

Because it shares the database, `joins(tx)` is True for this backend's transactions:
enqueue, ack and discard inside the kernel's transaction commit (or roll back) with it, so
there is never a ghost job from a rolled-back transaction nor a lost one from a committed
one. Called without `tx`, each operation is its own transaction.

Dequeue is one `UPDATE ... WHERE seq IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`:
concurrent dequeuers never take the same job, and a job whose lease expired is available
again without anyone releasing it (as in the reference queue). Every time comes from the
injected clock.

Wake-ups (outside the port): `wait_for_jobs(timeout)` returns early when a job is enqueued
by this process, or, on PostgreSQL, when any process enqueues (`pg_notify` in the enqueuing
transaction, heard on a dedicated LISTEN connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, literal, or_, select, tuple_, update

from stagewise._ports import Clock, Transaction
from stagewise._records import JobMessage
from stagewise_sql import _rows
from stagewise_sql._connect import is_memory_sqlite
from stagewise_sql._engine import Database, UnitConnection
from stagewise_sql._feed import open_listener
from stagewise_sql._persistence import SqlTransaction
from stagewise_sql._pg import RUNS_CHANNEL
from stagewise_sql._schema import jobs as jobs_t
from stagewise_sql._statements import insert_ignore, time_param

_log = logging.getLogger("stagewise_sql")

CHANNEL = "stagewise_jobs"
"""The PostgreSQL NOTIFY channel that enqueues announce themselves on."""

SQLITE_WATCH_INTERVAL = 0.005
"""SQLite: how often (seconds) a waiting worker looks for commits by other processes."""

# The newest row of each kind of work, by id. Not by rowid (`seq` for jobs): SQLite gives a
# new row the largest rowid plus one, so once the rows with the largest ones are gone (acked
# jobs) the same numbers come again, and "newer than the newest seen" would never be true.
# A new row always has the largest rowid of those present, though, so the newest row changes
# whenever one is added; ids are never reused.
_NEWEST_PENDING_RUN = (
    "SELECT run_id FROM stagewise_runs WHERE status = 'PENDING' ORDER BY rowid DESC LIMIT 1"
)
_NEWEST_DUE_JOB = (
    "SELECT job_id FROM stagewise_jobs WHERE available_at <= ? "
    "AND (lease_expires_at IS NULL OR lease_expires_at <= ?) ORDER BY seq DESC LIMIT 1"
)


def _sqlite_time(value: datetime) -> str:
    """A time as SQLAlchemy stores it in SQLite (naive UTC text), for raw comparisons."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _first(row: tuple[Any, ...] | None) -> Any:
    return None if row is None else row[0]


_ORDER = (jobs_t.c.priority.desc(), jobs_t.c.available_at, jobs_t.c.seq)


def _of_workflows(workflows: Sequence[tuple[str, str]] | None) -> list[ColumnElement[bool]]:
    """The condition for jobs of `workflows` (none: any job), as `of_workflows` says."""
    if workflows is None:
        return []
    ids = sorted({w for w, _ in workflows})
    versioned = tuple_(jobs_t.c.workflow_id, jobs_t.c.workflow_version).in_(list(workflows))
    return [
        or_(versioned, and_(jobs_t.c.workflow_version.is_(None), jobs_t.c.workflow_id.in_(ids)))
    ]


class SqlJobTransport:
    """The `JobTransport` port on the backend's own database."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._runs_wakeup = asyncio.Event()
        # Our NOTIFY payload: our own enqueues wake our waiters on commit already, so the
        # echo of them from the server is ignored rather than waking a waiter twice.
        self._token = db.token
        self._listener: Any = None  # an asyncpg connection, on PostgreSQL once listening
        self._listen_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None  # SQLite: see _watch_sqlite
        self._own_newest: str | None = None  # SQLite: the last job this process enqueued

    def joins(self, tx: Transaction) -> bool:
        return isinstance(tx, SqlTransaction) and tx.db is self._db

    @contextlib.asynccontextmanager
    async def _write(self, tx: Transaction | None) -> AsyncIterator[UnitConnection]:
        if tx is not None and isinstance(tx, SqlTransaction) and tx.db is self._db:
            yield tx.link
        else:
            async with self._db.single(write=True) as link:
                yield link

    async def enqueue(self, jobs: Sequence[JobMessage], *, tx: Transaction | None = None) -> None:
        """Make jobs deliverable from their `available_at`.

        Enqueueing a job id that is already queued replaces it (and its lease), as in the
        reference queue.
        """
        if not jobs:
            return
        # A repeated id within one call: the last one wins, in the last one's place (as
        # with the reference's dict assignment and enqueue counter).
        last: dict[str, dict[str, Any]] = {}
        for job in reversed(jobs):
            last.setdefault(job.job_id, _rows.job_values(job))
        values = list(reversed(last.values()))
        newest = values[-1]["job_id"]  # inserted last: the largest `seq` of them
        if tx is not None and self.joins(tx):
            assert isinstance(tx, SqlTransaction)
            await self._insert(tx.link, values)
            tx.link.on_commit.append(lambda: self._enqueued(newest))
            return
        async with self._db.atomic() as link:
            await self._insert(link, values)
            link.on_commit.append(lambda: self._enqueued(newest))

    def _enqueued(self, newest: str) -> None:
        """After commit: wake our own waiters, and tell the SQLite watcher this one is ours."""
        self._own_newest = newest
        self._wakeup.set()

    async def _insert(self, link: UnitConnection, values: list[dict[str, Any]]) -> None:
        stmt = insert_ignore(jobs_t, self._db.dialect).returning(jobs_t.c.job_id)
        if self._db.dialect == "postgresql":
            # NOTIFY rides on the insert itself (no extra round trip); PostgreSQL sends it
            # on commit, once per transaction however many rows call it.
            stmt = stmt.returning(func.pg_notify(CHANNEL, literal(self._token)))
        inserted = list(await link.execute(stmt, values))
        if len(inserted) < len(values):
            # Some were already queued: replace them, and give the whole batch fresh places
            # in call order (the enqueue order is the last tie-break of dequeue order).
            ids = [v["job_id"] for v in values]
            await link.execute(delete(jobs_t).where(jobs_t.c.job_id.in_(ids)))
            await link.execute(stmt, values)

    async def dequeue(
        self,
        *,
        worker_id: str,
        limit: int,
        lease_for: float,
        workflows: Sequence[tuple[str, str]] | None = None,
    ) -> list[JobMessage]:
        """Take up to `limit` available jobs, each leased to `worker_id` for `lease_for`
        seconds (priority first, then availability, then enqueue order); with `workflows`,
        only jobs of those workflow versions."""
        if limit <= 0 or workflows == []:
            return []
        now = self._clock.now()
        t = time_param("now", now)
        picked = (
            select(jobs_t.c.seq)
            .where(
                jobs_t.c.available_at <= t,
                or_(jobs_t.c.lease_expires_at.is_(None), jobs_t.c.lease_expires_at <= t),
                *_of_workflows(workflows),
            )
            .order_by(*_ORDER)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(jobs_t)
            .where(jobs_t.c.seq.in_(picked.scalar_subquery()))
            .values(
                worker_id=worker_id,
                lease_expires_at=time_param("expires", now + timedelta(seconds=lease_for)),
            )
            .returning(*jobs_t.c)
        )
        async with self._db.single(write=True) as link:
            rows = list(await link.execute(stmt))
        rows.sort(key=lambda row: (-row.priority, row.available_at, row.seq))
        return [_rows.job_from_row(row) for row in rows]

    async def ack(self, job_ids: Sequence[str], *, tx: Transaction | None = None) -> None:
        if job_ids:
            async with self._write(tx) as link:
                await link.execute(delete(jobs_t).where(jobs_t.c.job_id.in_(list(job_ids))))

    async def retry_at(self, job_id: str, at: datetime) -> None:
        stmt = (
            update(jobs_t)
            .where(jobs_t.c.job_id == job_id)
            .values(available_at=time_param("at", at), worker_id=None, lease_expires_at=None)
        )
        async with self._db.single(write=True) as link:
            await link.execute(stmt)

    async def extend_lease(self, job_id: str, *, lease_for: float) -> bool:
        expires = self._clock.now() + timedelta(seconds=lease_for)
        stmt = (
            update(jobs_t)
            .where(jobs_t.c.job_id == job_id)
            .values(lease_expires_at=time_param("expires", expires))
        )
        async with self._db.single(write=True) as link:
            return (await link.execute(stmt)).rowcount > 0

    async def release_expired(self, *, worker_id: str | None = None) -> int:
        t = time_param("now", self._clock.now())
        expired = jobs_t.c.lease_expires_at <= t
        held = expired if worker_id is None else or_(expired, jobs_t.c.worker_id == worker_id)
        stmt = (
            update(jobs_t)
            .where(and_(jobs_t.c.lease_expires_at.is_not(None), held))
            .values(worker_id=None, lease_expires_at=None)
        )
        async with self._db.single(write=True) as link:
            return (await link.execute(stmt)).rowcount

    async def discard_run(self, run_id: str, *, tx: Transaction | None = None) -> int:
        async with self._write(tx) as link:
            return (await link.execute(delete(jobs_t).where(jobs_t.c.run_id == run_id))).rowcount

    # --- outside the port ----------------------------------------------------------------

    async def jobs(self) -> list[JobMessage]:
        """Every queued job (leased or not) in enqueue order, for tests and tools."""
        async with self._db.single(write=False) as link:
            rows = await link.execute(select(jobs_t).order_by(jobs_t.c.seq))
            return [_rows.job_from_row(row) for row in rows]

    async def next_available_at(self) -> datetime | None:
        """When the next job becomes deliverable (its availability or lease expiry)."""
        stmt = select(jobs_t.c.available_at, jobs_t.c.lease_expires_at)
        async with self._db.single(write=False) as link:
            rows = list(await link.execute(stmt))
        times = [max(r.available_at, r.lease_expires_at or r.available_at) for r in rows]
        return min(times) if times else None

    async def wait_for_jobs(self, timeout: float) -> bool:  # noqa: ASYNC109 (a poll interval)
        """Wait up to `timeout` seconds (real time) for a sign that jobs were enqueued.

        Returns True early when this process enqueued a job or, on PostgreSQL, when any
        process did (NOTIFY; on a SQLite file, see `_watch_sqlite`); False when the time ran
        out. A sign that came while nobody
        was waiting is kept for the next call, so none is lost between a dequeue and the
        wait. Only a hint: callers dequeue after it either way.
        """
        self._start_listening()
        if self._db.dialect == "postgresql" and self._listener is None:
            await self._listen()
        if not self._wakeup.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
        woke = self._wakeup.is_set()
        self._wakeup.clear()
        return woke

    async def wait_for_runs(self, timeout: float) -> bool:  # noqa: ASYNC109 (a poll interval)
        """Wait up to `timeout` seconds (real time) for a sign that another process created
        a run (PostgreSQL NOTIFY on run insert; on a SQLite file, the watcher described in
        `_watch_sqlite`); like `wait_for_jobs`, only a hint.
        """
        self._start_listening()
        if self._db.dialect == "postgresql" and self._listener is None:
            await self._listen()
        if not self._runs_wakeup.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._runs_wakeup.wait(), timeout)
        woke = self._runs_wakeup.is_set()
        self._runs_wakeup.clear()
        return woke

    def _start_listening(self) -> None:
        if self._db.is_sqlite and self._watcher is None and self._sqlite_path() is not None:
            self._watcher = asyncio.create_task(self._watch_sqlite(), name="stagewise-sqlite-watch")

    def _sqlite_path(self) -> str | None:
        url = self._db.engine.url
        if is_memory_sqlite(url) or url.query.get("uri"):
            return None  # nothing outside this process can write to it
        return url.database

    async def _watch_sqlite(self) -> None:
        """SQLite has no NOTIFY: watch the file for commits by other connections instead.

        Every `SQLITE_WATCH_INTERVAL` seconds, `PRAGMA data_version` on a connection of its
        own says whether any other connection committed (it reads shared memory: no I/O, no
        lock, a few microseconds, so it runs on the loop). Only then two indexed reads ask
        for the newest PENDING run and the newest deliverable job, and wake the waiters when
        either is another one than at the last look (and, for a job, not the newest this
        process enqueued: that woke it on commit). So a worker process hears of work
        another process created within a few milliseconds, without opening a write
        transaction to find out, and is woken once for each new piece of work, not at every
        commit while it is still there (a run its claim keeps failing on does not make it
        claim at every commit).
        """
        path = self._sqlite_path()
        assert path is not None
        conn: sqlite3.Connection | None = None
        last: int | None = None
        run: str | None = None  # the newest PENDING run and deliverable job at the last look
        job: str | None = None
        while True:
            try:
                if conn is None:
                    conn = sqlite3.connect(path, timeout=0.05, isolation_level=None)
                (version,) = conn.execute("PRAGMA data_version").fetchone()
                if version != last:
                    last = version
                    newest_run = _first(conn.execute(_NEWEST_PENDING_RUN).fetchone())
                    if newest_run is not None and newest_run != run:
                        self._runs_wakeup.set()
                    now = _sqlite_time(self._clock.now())
                    newest_job = _first(conn.execute(_NEWEST_DUE_JOB, (now, now)).fetchone())
                    if newest_job not in (None, job, self._own_newest):
                        self._wakeup.set()
                    run, job = newest_run, newest_job
            except sqlite3.Error as exc:  # a locked or recovering file: look again soon
                _log.debug("sqlite watch: %s", exc)
                if conn is not None:
                    conn.close()
                conn, last = None, None
            except asyncio.CancelledError:
                if conn is not None:
                    conn.close()
                raise
            await asyncio.sleep(SQLITE_WATCH_INTERVAL)

    async def _listen(self) -> None:
        async with self._listen_lock:
            if self._listener is None:  # (not listening: waits sleep their timeout)
                channels = {CHANNEL: self._on_notify, RUNS_CHANNEL: self._on_run_notify}
                self._listener = await open_listener(self._db, channels, self._on_listener_lost)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload != self._token:
            self._wakeup.set()

    def _on_run_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload != self._token:
            self._runs_wakeup.set()

    def _on_listener_lost(self, *_args: object) -> None:
        self._listener = None
        self._wakeup.set()  # wake the waiters, which re-poll and listen again
        self._runs_wakeup.set()

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close(timeout=2)
