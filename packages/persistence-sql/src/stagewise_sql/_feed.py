"""The `ChangeFeed` port on SQLite and PostgreSQL: hints that another process committed a
change a reader here waits on (`wait_for_run`, `get_event`, `read_stream`).

Theory of operation
-------------------
**PostgreSQL** sends the hint itself: a transaction that publishes a value, writes a stream
item or ends a run NOTIFYs `CHANGES_CHANNEL` with those runs' ids, in the statement that
writes them (`_pg`), so the notification is delivered on commit and only then. The feed
LISTENs on a connection of its own, opened by the first `watch` (which returns only once
LISTEN is in place, so that nothing committed after it is missed) and kept until `close`.
A lost connection hints every watcher (they read again, and hear of nothing meanwhile but
their polls) and is opened again by the next `watch`.

**SQLite** has no NOTIFY, so the feed watches the file: every `WATCH_INTERVAL` seconds,
`PRAGMA data_version` on a connection of its own says whether any other connection has
committed (it reads shared memory: no I/O, no lock). Only then one indexed read takes the
versions of the watched runs; a run's version moves with every change of it (a stage, a
published value, a stream item, its end: see `_run`), so a version other than the one last
seen is a hint. The version is first read by `watch` itself, before it returns: a commit
before that read is seen by the reader's own read that follows, one after it moves the
version. A database in memory has no other process: nothing to watch.

A hint is only that: a reader reads again, and keeps its poll for a hint that never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

from stagewise_sql._connect import is_memory_sqlite
from stagewise_sql._engine import Database
from stagewise_sql._pg import CHANGES_CHANNEL

_log = logging.getLogger("stagewise_sql")

WATCH_INTERVAL = 0.005
"""SQLite: how often (seconds) the feed looks for commits by other processes."""

Hint = Callable[[], None]


def listener_options(db: Database) -> dict[str, Any]:
    """asyncpg's `connect` arguments for a LISTEN connection to `db` (the pool's own,
    without the options of pooled, prepared statements)."""
    _, options = db.engine.dialect.create_connect_args(db.engine.url)
    for key in ("prepared_statement_cache_size", "prepared_statement_name_func"):
        options.pop(key, None)
    return dict(options)


Notified = Callable[[object, int, str, str], None]
"""asyncpg's listener callback: (connection, pid, channel, payload)."""


async def open_listener(
    db: Database, channels: Mapping[str, Notified], lost: Callable[..., None]
) -> Any:
    """An asyncpg connection that LISTENs on `channels` (each with its callback) and calls
    `lost` if it terminates; None, logged, when it cannot be opened (whoever waits on it
    falls back to its poll, and asks again later)."""
    import asyncpg  # type: ignore[import-untyped]

    conn = None
    try:
        conn = await asyncpg.connect(**listener_options(db), timeout=10)
        for channel, notified in channels.items():
            await conn.add_listener(channel, notified)
    except Exception as exc:
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
        names = ", ".join(channels)
        _log.warning("cannot LISTEN on %s at %s: %s", names, db.url_display, exc)
        return None
    conn.add_termination_listener(lost)
    return conn


class SqlChangeFeed:
    """Hints of other processes' commits, by run (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._hints: dict[str, list[Hint]] = {}
        self._listener: Any = None  # PostgreSQL: the asyncpg LISTEN connection
        self._listen_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None  # SQLite: the file watcher
        self._conn: sqlite3.Connection | None = None
        self._versions: dict[str, int | None] = {}

    async def watch(self, run_id: str, hint: Hint) -> Callable[[], None]:
        path = self._sqlite_path()
        if self._db.is_sqlite and path is None:
            return _nothing  # in memory: no other process
        self._hints.setdefault(run_id, []).append(hint)
        if path is None:
            await self._listen()
        else:
            self._versions[run_id] = self._version_now(path, run_id)
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.create_task(self._watch_file(path), name="stagewise-feed")

        def unwatch() -> None:
            hints = self._hints.get(run_id)
            if hints is not None:
                with contextlib.suppress(ValueError):
                    hints.remove(hint)
                if not hints:
                    del self._hints[run_id]
                    self._versions.pop(run_id, None)

        return unwatch

    def _hint(self, run_ids: list[str] | None) -> None:
        """Call the hints of `run_ids` (None: of every watched run)."""
        for run_id in list(self._hints) if run_ids is None else run_ids:
            for hint in list(self._hints.get(run_id, ())):
                hint()

    # --- PostgreSQL ----------------------------------------------------------------------

    async def _listen(self) -> None:
        async with self._listen_lock:
            if self._listener is None:  # (not listening: readers poll; tried at each watch)
                channels = {CHANGES_CHANNEL: self._on_notify}
                self._listener = await open_listener(self._db, channels, self._on_lost)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._hint(None if payload == "*" else payload.split(" "))

    def _on_lost(self, *_args: object) -> None:
        self._listener = None
        self._hint(None)  # whatever happened meanwhile, read again

    # --- SQLite --------------------------------------------------------------------------

    def _sqlite_path(self) -> str | None:
        url = self._db.engine.url
        if not self._db.is_sqlite or is_memory_sqlite(url) or url.query.get("uri"):
            return None
        return url.database

    def _connection(self, path: str) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(path, timeout=0.05, isolation_level=None)
        return self._conn

    def _version_now(self, path: str, run_id: str) -> int | None:
        try:
            row = (
                self._connection(path)
                .execute("SELECT version FROM stagewise_runs WHERE run_id = ?", (run_id,))
                .fetchone()
            )
        except sqlite3.Error:
            self._drop_connection()
            return None  # unknown: the first look hints (a read too many, not one missed)
        return None if row is None else int(row[0])

    async def _watch_file(self, path: str) -> None:
        last: int | None = None
        while self._hints:
            try:
                conn = self._connection(path)
                (version,) = conn.execute("PRAGMA data_version").fetchone()
                if version != last:
                    last = version
                    self._look(conn)
            except sqlite3.Error as exc:  # a locked or recovering file: look again soon
                _log.debug("sqlite change feed: %s", exc)
                self._drop_connection()
                last = None
            await asyncio.sleep(WATCH_INTERVAL)

    def _look(self, conn: sqlite3.Connection) -> None:
        watched = list(self._hints)
        if not watched:
            return
        marks = ", ".join("?" * len(watched))
        rows = conn.execute(
            f"SELECT run_id, version FROM stagewise_runs WHERE run_id IN ({marks})", watched
        ).fetchall()
        now: dict[str, int | None] = dict.fromkeys(watched)
        now.update({run_id: int(version) for run_id, version in rows})
        moved = [r for r in watched if r in self._versions and now[r] != self._versions[r]]
        for run_id in moved:
            self._versions[run_id] = now[run_id]
        if moved:
            self._hint(moved)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        self._drop_connection()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close(timeout=2)


def _nothing() -> None:
    return None
