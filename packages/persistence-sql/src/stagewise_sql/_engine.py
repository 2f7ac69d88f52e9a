"""Connections and the rules for using them (URLs and engines are `_connect`'s).

`Database` is the one place that opens connections. It gives out a `Link` (a connection in
use by one unit of work, through which every statement runs and every driver error is
translated) in one of two modes:

* `transaction()` - BEGIN ... COMMIT. SQLite begins with `BEGIN IMMEDIATE`, so writers take
  the write lock up front and never fail later on a lock upgrade; PostgreSQL runs at READ
  COMMITTED and locks rows explicitly (`FOR UPDATE`, `SKIP LOCKED`). On PostgreSQL the
  transaction is the asyncpg connection's own (BEGIN, COMMIT and ROLLBACK sent on it, with
  SQLAlchemy's connection in autocommit mode on top), so the hot path's statements can run
  on the driver directly (`Link.fetch`) and its writes go out collected, as one statement,
  before the next read or the commit (`Link.writes`, see `_pg`). A connection given back
  with the driver's transaction still open, or broken, is dropped from the pool.
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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from typing import Any, NoReturn, TypeVar

from sqlalchemy import Connection
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.base import Executable

from stagewise._errors import PersistenceError, TransientError
from stagewise_sql._connect import BEGIN_OPTION, Dialect, is_memory_sqlite
from stagewise_sql._errors import is_disconnect, translate
from stagewise_sql._pg import RUNS_CHANNEL, Fields, PgWrites

T = TypeVar("T")


class Link:
    """A connection in use by one unit of work. Every statement goes through `execute`
    (SQLAlchemy) or `fetch` (the asyncpg driver, PostgreSQL only)."""

    __slots__ = ("_fresh", "_reopen", "closed", "conn", "db", "driver", "on_commit", "writes")

    def __init__(
        self,
        db: Database,
        conn: AsyncConnection,
        *,
        reopen: Callable[[], Awaitable[AsyncConnection]] | None,
        driver: Any = None,
        writes: PgWrites | None = None,
    ) -> None:
        self.db = db
        self.conn = conn
        self.driver = driver
        """The asyncpg connection under `conn` (PostgreSQL transactions only)."""
        self.writes = writes
        """Writes collected to go out as one statement (PostgreSQL transactions, `_pg`)."""
        self.on_commit: list[Callable[[], None]] = []
        self.closed = False
        self._fresh = True
        # How to replace a connection found dead on the first statement, when that statement
        # may be replayed: a transaction's first (nothing reached the server, or the server
        # rolled it back) or a read. Not an autocommitted write, which may have committed
        # before the connection dropped.
        self._reopen = reopen

    async def execute(self, statement: Executable, params: Any = None) -> CursorResult[Any]:
        if self.writes:
            await self.send_writes()
        try:
            result = await self.conn.execute(statement, params)
        except Exception as exc:
            if not (self._fresh and self._reopen is not None and is_disconnect(exc)):
                self.db.reraise(exc)
            await self.db.release(self.conn)
            self.conn = await self._reopen()
            if self.driver is not None:
                self.driver = await driver_of(self.conn)
            try:
                result = await self.conn.execute(statement, params)
            except Exception as again:
                self.db.reraise(again)
        self._fresh = False
        return result

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Rows of `sql` run on the driver (PostgreSQL transactions), attribute-readable."""
        if self.writes:
            await self.send_writes()
        self._fresh = False
        try:
            rows = await self.driver.fetch(sql, *args)
        except Exception as exc:
            self.db.reraise(exc)
        return [Fields(row) for row in rows]

    async def send_writes(self) -> None:
        """Send the collected writes (one statement) now."""
        assert self.writes is not None
        statement, args = self.writes.take()
        self._fresh = False
        try:
            await self.driver.execute(statement, *args)
        except Exception as exc:
            self.db.reraise(exc)

    async def run_sync(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` with the sync face of the connection (for Alembic and inspection)."""
        try:
            return await self.conn.run_sync(fn)
        except Exception as exc:
            self.db.reraise(exc)


async def driver_of(conn: AsyncConnection) -> Any:
    """The asyncpg connection under a SQLAlchemy connection."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def _commit(link: Link) -> None:
    if link.driver is None:
        await link.conn.commit()
        return
    if link.writes:
        await link.send_writes()
    await link.driver.execute("COMMIT")


async def _rollback(link: Link) -> None:
    if link.driver is None:
        await link.conn.rollback()
    else:
        await link.driver.execute("ROLLBACK")


class Database:
    """An engine plus the discipline for using it (see the module docstring)."""

    def __init__(self, engine: AsyncEngine, *, retries: int = 4) -> None:
        self.engine = engine
        url = engine.url
        self.dialect: Dialect = "sqlite" if url.get_backend_name() == "sqlite" else "postgresql"
        self.is_sqlite = self.dialect == "sqlite"
        self.url_display = url.render_as_string(hide_password=True)
        self._memory = is_memory_sqlite(url)
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

    async def _retrying(self, open_: Callable[[], Any]) -> AsyncConnection:
        for attempt in range(self._retries):
            try:
                conn: AsyncConnection = await open_()
                return conn
            except Exception as exc:
                if not isinstance(self.error(exc), TransientError) or attempt + 1 == self._retries:
                    self.reraise(exc)
            # Full jitter: concurrent retriers spread out instead of colliding again.
            await asyncio.sleep(random.uniform(0, 0.05 * 2**attempt))
        raise AssertionError("unreachable")

    async def begin_connection(self) -> AsyncConnection:
        """A pooled connection inside BEGIN, retrying connect and BEGIN failures.

        On PostgreSQL the transaction is the driver's own: SQLAlchemy's connection is in
        autocommit mode, and BEGIN, COMMIT and ROLLBACK go to the asyncpg connection under
        it, so that statements sent on the driver directly (`Link.fetch`, `_pg`) and through
        SQLAlchemy run in the same transaction, whichever comes first.
        """

        async def open_() -> AsyncConnection:
            conn = await self.engine.connect()
            try:
                if self.is_sqlite:
                    await conn.begin()
                else:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                    driver = await driver_of(conn)
                    await driver.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            except BaseException:
                if not self.is_sqlite:  # a connection that cannot begin is not pooled again
                    with suppress(Exception):
                        await conn.invalidate()
                await self.discard(conn)
                raise
            return conn

        return await self._retrying(open_)

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
            if self.is_sqlite:
                link = Link(self, await self.begin_connection(), reopen=None)
            else:
                conn = await self.begin_connection()
                link = Link(
                    self,
                    conn,
                    reopen=self.begin_connection,
                    driver=await driver_of(conn),
                    writes=PgWrites((RUNS_CHANNEL, self.token)),
                )
            token = self._active.set(link) if self.is_sqlite else None
            try:
                yield link
                try:
                    await _commit(link)
                except Exception as exc:
                    self.reraise(exc)
            except BaseException:
                with suppress(Exception):
                    await asyncio.shield(_rollback(link))
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
            reopen = self.autocommit_connection if replayable else None
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

    async def autocommit_connection(self) -> AsyncConnection:
        """A pooled connection whose statements each commit on their own."""
        conn = await self._retrying(self.engine.connect)
        if self.is_sqlite:
            return await conn.execution_options(**{BEGIN_OPTION: None})
        return await conn.execution_options(isolation_level="AUTOCOMMIT")
