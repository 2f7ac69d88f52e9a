"""Database URLs and engines: which databases and drivers stagewise takes, and how an
engine is configured for it (SQLite's pragmas and BEGIN; PostgreSQL's isolation level)."""

from __future__ import annotations

import re
from typing import Any, Literal

from sqlalchemy import URL, Connection, event, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import PoolResetState

from stagewise_sql._errors import InvalidDatabaseUrlError
from stagewise_sql._lite import ENDED

SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRES_DRIVER = "postgresql+asyncpg"
BEGIN_OPTION = "stagewise_begin"
_SUPPORTED = f"use {SQLITE_DRIVER}:///path.db or {POSTGRES_DRIVER}://user@host/dbname"

Dialect = Literal["sqlite", "postgresql"]


def parse_url(url: str | URL) -> URL:
    """The URL with its async driver filled in (`sqlite:///x.db` -> `sqlite+aiosqlite:///x.db`).

    Raises:
        InvalidDatabaseUrlError: malformed, or a database or driver stagewise does not support.
    """
    try:
        parsed = make_url(url)
        _ = parsed.port  # a non-numeric port fails here, not at connect time
    except (sa_exc.ArgumentError, ValueError, TypeError) as exc:
        raise InvalidDatabaseUrlError(display_url(url), f"cannot parse it; {_SUPPORTED}") from exc
    shown = display_url(parsed)
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite", "aiosqlite"):
        return parsed.set(drivername=SQLITE_DRIVER)
    if backend in ("postgresql", "postgres") and driver in ("", "asyncpg"):
        if not parsed.host and "host" not in parsed.query:
            raise InvalidDatabaseUrlError(shown, "it names no host")
        return parsed.set(drivername=POSTGRES_DRIVER)
    if backend in ("sqlite", "postgresql", "postgres"):
        raise InvalidDatabaseUrlError(shown, f"driver {driver!r} is not supported; {_SUPPORTED}")
    raise InvalidDatabaseUrlError(shown, f"database {backend!r} is not supported; {_SUPPORTED}")


_SECRET_PARAM = re.compile(r"pass|secret|token", re.IGNORECASE)
"""Query parameters whose values are hidden (`password`, `sslpassword`, `passfile`...)."""
_HIDDEN = "***"


def display_url(url: str | URL) -> str:
    """The URL as stagewise shows it, in messages and logs: every password hidden, in the
    user-info (`user:***@host`) and in query parameters (`?password=***`)."""
    if isinstance(url, str):
        try:
            parsed = make_url(url)
        except (sa_exc.ArgumentError, ValueError, TypeError):
            return _mask(url)
        return display_url(parsed)
    marker = "stagewisehidden"  # a value the URL renders as it is, replaced after
    secrets = {key: marker for key in url.query if _SECRET_PARAM.search(key)}
    shown = url.update_query_dict(secrets).render_as_string(hide_password=True)
    return shown.replace(marker, _HIDDEN)


def _mask(raw: str) -> str:
    """`raw` with any password hidden, for URLs that do not parse."""
    raw = re.sub(r"(://[^:/@?#]*:)[^@/?#]*@", rf"\1{_HIDDEN}@", raw)
    return re.sub(
        r"([?&;][^=&;#]*(?:pass|secret|token)[^=&;#]*=)[^&;#]*",
        rf"\1{_HIDDEN}",
        raw,
        flags=re.IGNORECASE,
    )


def is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_engine(
    url: URL,
    *,
    pool_size: int,
    busy_timeout: float,
    connect_timeout: float,
    echo: bool = False,
) -> AsyncEngine:
    """An async engine for `url` (already through `parse_url`), configured for stagewise."""
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(
            url,
            echo=echo,
            connect_args={"timeout": busy_timeout},
            pool_reset_on_return=None,  # done by the "reset" hook below
            **({} if is_memory_sqlite(url) else {"pool_size": pool_size, "max_overflow": 0}),
        )
        _install_sqlite_hooks(engine, busy_timeout_ms=int(busy_timeout * 1000))
        return engine
    return create_async_engine(
        url,
        echo=echo,
        isolation_level="READ COMMITTED",
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={
            "timeout": connect_timeout,
            "server_settings": {"application_name": "stagewise"},
        },
    )


def _install_sqlite_hooks(engine: AsyncEngine, *, busy_timeout_ms: int) -> None:
    # SQLAlchemy's recipe for owning BEGIN on sqlite3/aiosqlite: turn the driver's own
    # transaction handling off and emit BEGIN ourselves (IMMEDIATE unless told otherwise).
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # The busy timeout first: switching to WAL needs the database to itself for a
            # moment, and under another process's write it must wait, not fail with
            # "database is locked" (the flaky side-database fixture of the node tests had
            # this very order). Once the file is in WAL mode the switch is a no-op.
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    # The pool's rollback on check-in is a trip to the driver's thread; a connection whose
    # transaction the hot path ended cleanly (`_lite.ENDED`) skips it.
    @event.listens_for(engine.sync_engine, "reset")
    def _on_reset(dbapi_connection: Any, record: Any, state: PoolResetState) -> None:
        ended = record.info.pop(ENDED, False)
        if ended or state.terminate_only or state.transaction_was_reset:
            return
        if state.asyncio_safe:
            dbapi_connection.rollback()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        statement = conn.get_execution_options().get(BEGIN_OPTION, "BEGIN IMMEDIATE")
        if statement:
            conn.exec_driver_sql(statement)
