"""Connections and the rules for using them (URLs and engines are `_connect`'s).

`Database` is the one place that opens connections. It gives out a `Link` (a connection in
use by one unit of work, through which every statement runs and every driver error is
translated) in one of two modes:

* `transaction()` - BEGIN ... COMMIT. SQLite begins with `BEGIN IMMEDIATE`, so writers take
  the write lock up front and never fail later on a lock upgrade; PostgreSQL runs at READ
  COMMITTED and locks rows explicitly (`FOR UPDATE`, `SKIP LOCKED`). The transaction is the
  driver's own (BEGIN, COMMIT and ROLLBACK sent on the asyncpg or aiosqlite connection,
  with SQLAlchemy's connection on top emitting none), so the hot path's statements can run
  on the driver directly (`Link.hot`: `_pg`, `_lite`) and its writes go out collected,
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
from typing import Any, NoReturn, Protocol, TypeVar

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
from stagewise_sql._writes import Writes

T = TypeVar("T")


class HotPath(Protocol):
    """A transaction's hot path on its driver, without SQLAlchemy: PostgreSQL's (`_pg`) or
    SQLite's (`_lite`). It begins and ends the transaction, runs the batch reads of a
    stage, and collects the transaction's writes to send them together. `used` turns true
    once it has sent a statement."""

    writes: Writes
    used: bool

    async def begin(self) -> None: ...
    async def flush(self) -> None: ...
    async def commit(self) -> None: ...
    async def rollback(self) -> None: ...
    async def lock_many(self, run_ids: Sequence[str]) -> list[RunRecord]: ...
    async def for_runs(self, run_ids: Sequence[str]) -> list[StageRecord]: ...
    async def lock_with_stages(
        self, run_ids: Sequence[str]
    ) -> list[tuple[RunRecord, list[StageRecord]]]: ...
    async def claim_pending(self, limit: int) -> list[RunRecord]: ...


Opened = tuple[AsyncConnection, HotPath | None]
"""A connection just opened for a unit of work, and its hot path (transactions only)."""


class Link:
    """A connection in use by one unit of work. Every statement goes through `execute`
    (SQLAlchemy) or, in a transaction, its hot path (`hot`)."""

    __slots__ = ("_fresh", "_reopen", "closed", "conn", "db", "hot", "on_commit")

    def __init__(
        self,
        db: Database,
        conn: AsyncConnection,
        *,
        reopen: Callable[[], Awaitable[Opened]] | None,
        hot: HotPath | None = None,
    ) -> None:
        self.db = db
        self.conn = conn
        self.hot = hot
        """The transaction's hot path (transactions only; statements sent on it and
        through `execute` share the transaction)."""
        self.on_commit: list[Callable[[], None]] = []
        self.closed = False
        self._fresh = True
        # How to replace a connection found dead on the first statement, when that statement
        # may be replayed: a transaction's first (nothing reached the server, or the server
        # rolled it back) or a read. Not an autocommitted write, which may have committed
        # before the connection dropped.
        self._reopen = reopen

    async def execute(self, statement: Executable, params: Any = None) -> CursorResult[Any]:
        if self.hot is not None:
            await self.hot.flush()  # the collected writes go first
            self._fresh = self._fresh and not self.hot.used
        try:
            result = await self.conn.execute(statement, params)
        except Exception as exc:
            if not (self._fresh and self._reopen is not None and is_disconnect(exc)):
                self.db.reraise(exc)
            await self.db.release(self.conn)
            self.conn, self.hot = await self._reopen()
            try:
                result = await self.conn.execute(statement, params)
            except Exception as again:
                self.db.reraise(again)
        self._fresh = False
        return result

    async def run_sync(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` with the sync face of the connection (for Alembic and inspection)."""
        try:
            return await self.conn.run_sync(fn)
        except Exception as exc:
            self.db.reraise(exc)


def _hot(link: Link) -> HotPath:
    assert link.hot is not None, "a transaction's link has a hot path"
    return link.hot


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
        self._active: ContextVar[Link | None] = ContextVar(
            f"stagewise_sql_{id(self)}", default=None
        )
        self._retries = max(1, retries)
        self.token = uuid.uuid4().hex
        """This process's NOTIFY payload: its listener ignores the echo of its own writes,
        which already woke it in-process."""

    def error(self, exc: Exception) -> Exception:
        return translate(exc, url=self.url_display)

    def _open_link(self) -> Link | None:
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

    async def begin_connection(self) -> Opened:
        """A pooled connection inside BEGIN, and its hot path, retrying connect and BEGIN
        failures.

        The transaction is the driver's own: BEGIN, COMMIT and ROLLBACK go to the driver's
        connection (`HotPath`), so statements sent on the driver directly and through
        SQLAlchemy run in the same transaction, whichever comes first. SQLAlchemy's
        connection on top emits no BEGIN of its own (autocommit mode on PostgreSQL; on
        SQLite the BEGIN option is off, see `_connect`).
        """

        async def open_() -> Opened:
            conn = await self.engine.connect()
            try:
                if self.is_sqlite:
                    await conn.execution_options(**{BEGIN_OPTION: None})
                else:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                hot = await self._hot_path(conn)
                await hot.begin()
            except BaseException:
                if not self.is_sqlite:  # a connection that cannot begin is not pooled again
                    with suppress(Exception):
                        await conn.invalidate()
                await self.discard(conn)
                raise
            return conn, hot

        return await self._retrying(open_)

    async def _hot_path(self, conn: AsyncConnection) -> HotPath:
        """The hot path on `conn`'s driver connection."""
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
    async def transaction(self) -> AsyncIterator[Link]:
        """A Link inside BEGIN ... COMMIT; rolled back if the block raises."""
        if self._open_link() is not None:
            raise PersistenceError(
                "a transaction was opened inside another one in the same task; SQLite has a "
                "single writer, so the inner one would wait forever for the outer one"
            )
        async with self._serialized(write=True):
            conn, hot = await self.begin_connection()
            reopen = None if self.is_sqlite else self.begin_connection
            link = Link(self, conn, reopen=reopen, hot=hot)
            token = self._active.set(link) if self.is_sqlite else None
            try:
                yield link
                try:
                    await _hot(link).commit()
                except Exception as exc:
                    self.reraise(exc)
            except BaseException:
                with suppress(Exception):
                    await asyncio.shield(_hot(link).rollback())
                raise
            finally:
                link.closed = True
                if token is not None:
                    self._active.reset(token)
                await asyncio.shield(self.release(link.conn))
        for action in link.on_commit:
            action()

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[Link]:
        """A transaction of its own; on SQLite, the task's open transaction if it has one."""
        active = self._open_link()
        if active is not None:
            yield active
            return
        async with self.transaction() as link:
            yield link

    @asynccontextmanager
    async def single(self, *, write: bool) -> AsyncIterator[Link]:
        """A Link for work that is one statement, atomic on its own.

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
            link = Link(self, await self.autocommit_connection(), reopen=reopen)
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

    async def _reopen_autocommit(self) -> Opened:
        return await self.autocommit_connection(), None

    async def autocommit_connection(self) -> AsyncConnection:
        """A pooled connection whose statements each commit on their own."""
        conn = await self._retrying(self.engine.connect)
        if self.is_sqlite:
            return await conn.execution_options(**{BEGIN_OPTION: None})
        return await conn.execution_options(isolation_level="AUTOCOMMIT")
