"""Connections and the rules for using them (URLs and engines are `_connect`'s).

`Database` is the one place that opens connections. It gives out a `UnitConnection` (a connection in
use by one unit of work, through which every statement runs and every driver error is
translated) in one of two modes:

* `transaction()` - BEGIN ... COMMIT. SQLite begins with `BEGIN IMMEDIATE`, so writers take
  the write lock up front and never fail later on a lock upgrade; PostgreSQL runs at READ
  COMMITTED and locks rows explicitly (`FOR UPDATE`, `SKIP LOCKED`). The transaction is the
  driver's own (BEGIN, COMMIT and ROLLBACK sent on the asyncpg or aiosqlite connection,
  with SQLAlchemy's connection on top emitting none), so the hot path's statements can run
  on the driver directly (`UnitConnection.path`: `_pg`, `_lite`) and its writes go out held,
  together, before the next statement or with the commit (`_writes`). A PostgreSQL
  connection given back with the driver's transaction still open, or broken, is dropped
  from the pool.
* `single()` - for single statements that are atomic on their own (dequeue, ack, blob
  writes): on PostgreSQL in autocommit mode, without BEGIN/COMMIT round trips.

SQLite has one writer at a time. Within a process, writers queue on an `asyncio.Lock`
instead of spinning in SQLite's busy handler (which sleeps up to 100 ms per try); across
processes, `busy_timeout` still applies. A write outside any transaction issued by a task
that is already inside one of this database's transactions (a blob put or a transport
call inside the kernel's block) joins that transaction: a second writer would wait for the
first, which waits for it.

Only what has not touched the database is retried: getting a connection and BEGIN, and on
PostgreSQL a transaction's first statement when the connection turned out to be dead. An
error inside the caller's block surfaces as `TransientError`; the block cannot be re-run
from here.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from typing import Any, NamedTuple, NoReturn, Protocol, TypeVar

from sqlalchemy import Connection
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.base import Executable

from stagewise._errors import PersistenceError, TransientError
from stagewise._records import RunRecord, StageRecord
from stagewise_sql._connect import BEGIN_OPTION, Dialect, is_memory_sqlite
from stagewise_sql._errors import is_disconnect, translate
from stagewise_sql._lite import Codecs, LitePath
from stagewise_sql._pg import RUNS_CHANNEL, PgPath
from stagewise_sql._writes import PendingWrites

T = TypeVar("T")


class DriverPath(Protocol):
    """A transaction's path on its driver, without SQLAlchemy: PostgreSQL's (`_pg`) or
    SQLite's (`_lite`). It begins and ends the transaction, runs the reads of a stage, and
    holds the transaction's changeset to send it with the next statement. `used` turns
    true once it has sent a statement."""

    writes: PendingWrites
    used: bool
    failed: Exception | None
    """The first statement of the transaction that failed, if one did."""

    async def begin(self) -> None: ...
    async def flush(self) -> None: ...
    async def commit(self) -> None: ...
    async def rollback(self) -> None: ...
    async def load(
        self, run_ids: Sequence[str], *, skip_locked: bool = False
    ) -> list[tuple[RunRecord, list[StageRecord]]]: ...
    async def claim_pending(
        self, limit: int, *, workflows: Sequence[tuple[str, str]] | None = None
    ) -> list[RunRecord]: ...


class Checkout(NamedTuple):
    """A pooled connection taken for one unit of work, and its driver path (transactions
    only)."""

    conn: AsyncConnection
    path: DriverPath | None


class UnitConnection:
    """A connection in use by one unit of work. Every statement goes through `execute`
    (SQLAlchemy) or, in a transaction, its driver path (`path`)."""

    __slots__ = ("_fresh", "_reopen", "closed", "conn", "db", "failed", "on_commit", "path")

    def __init__(
        self,
        db: Database,
        conn: AsyncConnection,
        *,
        reopen: Callable[[], Awaitable[Checkout]] | None,
        path: DriverPath | None = None,
    ) -> None:
        self.db = db
        self.conn = conn
        self.path = path
        """The transaction's driver path (transactions only; statements sent on it and
        through `execute` share the transaction)."""
        self.on_commit: list[Callable[[], None]] = []
        self.closed = False
        self.failed: Exception | None = None
        """The first statement sent through `execute` that failed, if one did."""
        self._fresh = True
        # How to replace a connection found dead on the first statement, when that statement
        # may be replayed: a transaction's first (nothing reached the server, or the server
        # rolled it back) or a read. Not an autocommitted write, which may have committed
        # before the connection dropped.
        self._reopen = reopen

    async def execute(self, statement: Executable, params: Any = None) -> CursorResult[Any]:
        if self.path is not None:
            await self.path.flush()  # the held writes go first
            self._fresh = self._fresh and not self.path.used
        try:
            result = await self.conn.execute(statement, params)
        except Exception as exc:
            if not (self._fresh and self._reopen is not None and is_disconnect(exc)):
                self.failed = self.failed or exc
                self.db.reraise(exc)
            await self.db.release(self.conn)
            self.conn, self.path = await self._reopen()
            try:
                result = await self.conn.execute(statement, params)
            except Exception as again:
                self.failed = self.failed or again
                self.db.reraise(again)
        self._fresh = False
        return result

    async def run_sync(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` with the sync face of the connection (for Alembic and inspection)."""
        try:
            return await self.conn.run_sync(fn)
        except Exception as exc:
            self.db.reraise(exc)


def _path(link: UnitConnection) -> DriverPath:
    assert link.path is not None, "a transaction's connection has a driver path"
    return link.path


async def driver_of(conn: AsyncConnection) -> Any:
    """The driver's connection (asyncpg's, or aiosqlite's) under a SQLAlchemy connection."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


class Database:
    """An engine plus the discipline for using it (see the module docstring)."""

    def __init__(self, engine: AsyncEngine, *, retries: int = 4) -> None:
        self.engine = engine
        url = engine.url
        self.dialect: Dialect = "sqlite" if url.get_backend_name() == "sqlite" else "postgresql"
        self.is_sqlite = self.dialect == "sqlite"
        self.url_display = url.render_as_string(hide_password=True)
        self._memory = is_memory_sqlite(url)
        self._codecs = Codecs(engine.dialect) if self.is_sqlite else None
        self._write_lock = asyncio.Lock()
        self._active: ContextVar[UnitConnection | None] = ContextVar(
            f"stagewise_sql_{id(self)}", default=None
        )
        self._retries = max(1, retries)
        self.token = uuid.uuid4().hex
        """This process's NOTIFY payload: its listener ignores the echo of its own writes,
        which already woke it in-process."""

    def error(self, exc: Exception) -> Exception:
        return translate(exc, url=self.url_display)

    def _open_link(self) -> UnitConnection | None:
        """This task's open SQLite transaction, if any.

        A task created inside a transaction inherits the variable; once that transaction
        has ended its link is closed and no longer counts.
        """
        if not self.is_sqlite:
            return None
        link = self._active.get()
        return link if link is not None and not link.closed else None

    def reraise(self, exc: Exception) -> NoReturn:
        """Raise the stagewise error for `exc` (from inside its `except` block)."""
        error = self.error(exc)
        if error is exc:
            raise exc
        raise error from exc

    async def close(self) -> None:
        await self.engine.dispose()

    # --- connections -------------------------------------------------------------------

    async def _retrying(self, open_: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(self._retries):
            try:
                return await open_()
            except Exception as exc:
                if not isinstance(self.error(exc), TransientError) or attempt + 1 == self._retries:
                    self.reraise(exc)
            # Full jitter: concurrent retriers spread out instead of colliding again.
            await asyncio.sleep(random.uniform(0, 0.05 * 2**attempt))
        raise AssertionError("unreachable")

    async def begin_connection(self) -> Checkout:
        """A pooled connection inside BEGIN, and its driver path, retrying connect and BEGIN
        failures.

        The transaction is the driver's own: BEGIN, COMMIT and ROLLBACK go to the driver's
        connection (`DriverPath`), so statements sent on the driver directly and through
        SQLAlchemy run in the same transaction, whichever comes first. SQLAlchemy's
        connection on top emits no BEGIN of its own (autocommit mode on PostgreSQL; on
        SQLite the BEGIN option is off, see `_connect`).
        """

        async def open_() -> Checkout:
            conn = await self.engine.connect()
            try:
                if self.is_sqlite:
                    await conn.execution_options(**{BEGIN_OPTION: None})
                else:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                path = await self._driver_path(conn)
                await path.begin()
            except BaseException:
                if not self.is_sqlite:  # a connection that cannot begin is not pooled again
                    with suppress(Exception):
                        await conn.invalidate()
                await self.discard(conn)
                raise
            return Checkout(conn, path)

        return await self._retrying(open_)

    async def _driver_path(self, conn: AsyncConnection) -> DriverPath:
        """The driver path on `conn`'s driver connection."""
        driver = await driver_of(conn)
        if self._codecs is not None:
            return LitePath(driver, self._codecs, info=conn.info, reraise=self.reraise)
        return PgPath(driver, notify=(RUNS_CHANNEL, self.token), reraise=self.reraise)

    async def discard(self, conn: AsyncConnection) -> None:
        with suppress(Exception):
            await conn.close()

    async def release(self, conn: AsyncConnection) -> None:
        """Give the connection back to the pool, or drop it when the driver's transaction
        is still open or the connection broke (SQLAlchemy does not see the driver's own
        statements, so it cannot tell)."""
        if not self.is_sqlite:
            with suppress(Exception):
                driver = await driver_of(conn)
                if driver.is_closed() or driver.is_in_transaction():
                    await conn.invalidate()
        await self.discard(conn)

    @asynccontextmanager
    async def _serialized(self, write: bool) -> AsyncIterator[None]:
        if self.is_sqlite and (write or self._memory):
            async with self._write_lock:
                yield
        else:
            yield

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitConnection]:
        """A UnitConnection inside BEGIN ... COMMIT; rolled back if the block raises."""
        if self._open_link() is not None:
            raise PersistenceError(
                "a transaction was opened inside another one in the same task; SQLite has a "
                "single writer, so the inner one would wait forever for the outer one"
            )
        async with self._serialized(write=True):
            conn, path = await self.begin_connection()
            reopen = None if self.is_sqlite else self.begin_connection
            link = UnitConnection(self, conn, reopen=reopen, path=path)
            token = self._active.set(link) if self.is_sqlite else None
            try:
                yield link
                # A statement that failed inside the block leaves nothing to commit, even if
                # the block caught its error: the commit fails with that error (PostgreSQL
                # would turn a COMMIT of an aborted transaction into a silent ROLLBACK, and a
                # refused run update has already written the rest of its changeset).
                failed = link.failed or _path(link).failed
                if failed is not None:
                    self.reraise(failed)
                try:
                    await _path(link).commit()
                except Exception as exc:
                    self.reraise(exc)
            except BaseException:
                with suppress(Exception):
                    await asyncio.shield(_path(link).rollback())
                raise
            finally:
                link.closed = True
                if token is not None:
                    self._active.reset(token)
                await asyncio.shield(self.release(link.conn))
        for action in link.on_commit:
            action()

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[UnitConnection]:
        """A transaction of its own; on SQLite, the task's open transaction if it has one."""
        active = self._open_link()
        if active is not None:
            yield active
            return
        async with self.transaction() as link:
            yield link

    @asynccontextmanager
    async def single(self, *, write: bool) -> AsyncIterator[UnitConnection]:
        """A UnitConnection for work that is one statement, atomic on its own.

        PostgreSQL runs it in autocommit mode (no BEGIN/COMMIT round trips). On SQLite a
        write takes the write lock with `BEGIN IMMEDIATE` like any transaction (and joins
        the task's open transaction, see the module docstring); a read runs without BEGIN.
        """
        if self.is_sqlite and (write or self._memory):
            active = self._open_link()
            if active is not None:
                yield active
                return
            if write:
                async with self.transaction() as link:
                    yield link
                return
        async with self._serialized(write):
            replayable = not write and self.dialect == "postgresql"
            reopen = self._reopen_autocommit if replayable else None
            link = UnitConnection(self, await self.autocommit_connection(), reopen=reopen)
            try:
                yield link
                try:
                    await link.conn.commit()
                except Exception as exc:
                    self.reraise(exc)
            finally:
                await asyncio.shield(self.discard(link.conn))
        for action in link.on_commit:
            action()

    async def _reopen_autocommit(self) -> Checkout:
        return Checkout(await self.autocommit_connection(), None)

    async def autocommit_connection(self) -> AsyncConnection:
        """A pooled connection whose statements each commit on their own."""
        conn = await self._retrying(self.engine.connect)
        if self.is_sqlite:
            return await conn.execution_options(**{BEGIN_OPTION: None})
        return await conn.execution_options(isolation_level="AUTOCOMMIT")
