"""Fixtures that build the kernel's adapters on every backend.

`backend` is parametrized over `memory` (the reference in-memory adapters), `sqlite` (a
fresh database file per test) and `postgres` (a database of its own per test module,
emptied before each test); each gives `.persistence`, `.job_transport`, `.blob_store` and
the one `FakeClock` they all share. `sql_backend` is the same without `memory`. Any suite
written against `backend` runs on all three:

    async def test_something(backend: Adapters) -> None:
        async with backend.persistence.transaction() as tx: ...

PostgreSQL: `STAGEWISE_TEST_DATABASE_URL` names the server (default
`postgresql+asyncpg://postgres@127.0.0.1:5432/postgres`); each test module gets a database
created on it and dropped afterwards. When the server cannot be reached those tests are
skipped, except under `CI=true`, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, delete, make_url

from stagewise._ports import BlobStore, JobTransport, Persistence
from stagewise.testing import FakeClock, InMemoryBlobStore, InMemoryJobQueue, InMemoryPersistence
from stagewise_sql import SqlBackend, SqlSettings, metadata

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
BACKENDS = ("memory", "sqlite", "postgres")


@dataclass
class Adapters:
    """The kernel's storage ports on one backend, sharing one fake clock."""

    name: str
    persistence: Persistence
    job_transport: JobTransport
    blob_store: BlobStore
    clock: FakeClock
    sql: SqlBackend | None = None
    """The SQL backend behind the ports (None for `memory`)."""
    url: str | None = None
    """The database URL (None for `memory`)."""
    extras: dict[str, Any] = field(default_factory=dict)


# --- PostgreSQL ----------------------------------------------------------------------------


def pg_server_url() -> URL:
    return make_url(os.environ.get("STAGEWISE_TEST_DATABASE_URL", DEFAULT_PG_URL))


def _in_thread(coro_fn: Any, *args: Any) -> Any:
    """Run a coroutine on a private event loop in another thread.

    Module-scoped setup must not touch the tests' own event loops.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro_fn(*args)).result()


async def _admin(sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    url = pg_server_url()
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database or "postgres",
        timeout=5,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


_pg_unreachable: list[str] = []


def _unavailable(reason: str) -> None:
    where = pg_server_url().render_as_string(hide_password=True)
    message = f"PostgreSQL at {where} is not usable ({reason})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI needs it", pytrace=False)
    pytest.skip(
        f"{message}: start PostgreSQL there, or point STAGEWISE_TEST_DATABASE_URL at one, "
        "to run the postgres tests"
    )


def create_pg_database() -> str:
    """Create an empty database on the test server; returns its URL (skips/fails if down)."""
    if _pg_unreachable:
        _unavailable(_pg_unreachable[0])
    name = f"stagewise_test_{uuid.uuid4().hex[:12]}"
    try:
        _in_thread(_admin, f'CREATE DATABASE "{name}"')
    except Exception as exc:
        _pg_unreachable.append(f"{type(exc).__name__}: {exc}")
        _unavailable(_pg_unreachable[0])
    url = pg_server_url().set(drivername="postgresql+asyncpg", database=name)
    return url.render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    name = make_url(url).database
    _in_thread(_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """A PostgreSQL database for this test module, dropped after it."""
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of the test's own, nothing created in it: a SQLite file
    (not there yet), or a PostgreSQL database (dropped after, with any connection a killed
    process left behind)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'stagewise.db'}"
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@asynccontextmanager
async def extra_backends(adapters: Adapters, count: int) -> AsyncIterator[list[SqlBackend]]:
    """`count` more backends on the adapters' database, one engine and one connection each:
    as many separate processes would be."""
    assert adapters.url is not None
    settings = SqlSettings(pool_size=1)
    backends = [
        await SqlBackend.connect(adapters.url, clock=adapters.clock, settings=settings)
        for _ in range(count)
    ]
    try:
        yield backends
    finally:
        for b in backends:
            await b.close()


async def empty_tables(backend: SqlBackend) -> None:
    """Delete every stagewise row (cheaper than a new database per test)."""
    async with backend.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(delete(table))


# --- the adapters ----------------------------------------------------------------------


async def _open(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Adapters:
    clock = FakeClock()
    if name == "memory":
        persistence = InMemoryPersistence()
        return Adapters(
            name="memory",
            persistence=persistence,
            job_transport=InMemoryJobQueue(clock, persistence),
            blob_store=InMemoryBlobStore(),
            clock=clock,
        )
    if name == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'stagewise.db'}"
        sql = await SqlBackend.connect(url, clock=clock)
    else:
        url = request.getfixturevalue("pg_module_url")
        sql = await SqlBackend.connect(url, clock=clock)
        await empty_tables(sql)
    return Adapters(
        name=name,
        persistence=sql.persistence,
        job_transport=sql.job_transport,
        blob_store=sql.blob_store,
        clock=clock,
        sql=sql,
        url=url,
    )


def _params(names: tuple[str, ...]) -> list[Any]:
    return [
        pytest.param(n, marks=pytest.mark.postgres, id=n) if n == "postgres" else n for n in names
    ]


@pytest.fixture(params=_params(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Adapters]:
    """The storage ports on memory, SQLite and PostgreSQL in turn."""
    adapters = await _open(request.param, request, tmp_path)
    try:
        yield adapters
    finally:
        if adapters.sql is not None:
            await adapters.sql.close()


@pytest.fixture(params=_params(("sqlite", "postgres")))
async def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Adapters]:
    """The storage ports on SQLite and PostgreSQL in turn (`.sql` is the SqlBackend)."""
    adapters = await _open(request.param, request, tmp_path)
    try:
        yield adapters
    finally:
        if adapters.sql is not None:
            await adapters.sql.close()


@pytest.fixture
async def pg_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Adapters]:
    """The storage ports on PostgreSQL only (mark the test `postgres`)."""
    adapters = await _open("postgres", request, tmp_path)
    try:
        yield adapters
    finally:
        if adapters.sql is not None:
            await adapters.sql.close()
