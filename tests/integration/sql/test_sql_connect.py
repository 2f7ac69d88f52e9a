"""Connecting, URLs and the schema: each thing that can be wrong gives one clear error."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata, produce_migrations, render_python_code
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, make_url, text
from sqlalchemy.dialects import postgresql

from stagewise._errors import (
    InvalidInputError,
    PersistenceError,
    SchemaVersionError,
    StagewiseError,
    TransientError,
)
from stagewise_sql import (
    VERSION_TABLE,
    DatabaseUnavailableError,
    InvalidDatabaseUrlError,
    SchemaMissingError,
    SqlBackend,
    head_revision,
    metadata,
    render_item,
    upgrade,
)
from tests.conftest import create_pg_database, drop_pg_database


def one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message
    assert isinstance(error, StagewiseError)
    return message


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    """An empty PostgreSQL database of the test's own."""
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


# --- URLs and servers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not a url", "cannot parse"),
        ("postgresql://user:s3cret@host:notaport/db", "cannot parse"),
        ("mysql://user@host/db", "'mysql' is not supported"),
        ("postgresql+psycopg://user@host/db", "'psycopg' is not supported"),
        ("sqlite+pysqlcipher:///x.db", "'pysqlcipher' is not supported"),
        ("postgresql+asyncpg:///db", "no host"),
    ],
)
async def test_a_bad_url_is_refused_before_connecting(url: str, says: str) -> None:
    with pytest.raises(InvalidDatabaseUrlError) as raised:
        await SqlBackend.connect(url)
    message = one_line(raised.value)
    assert says in message
    assert "s3cret" not in message
    assert isinstance(raised.value, InvalidInputError)


async def test_an_unreachable_server_is_reported_as_unavailable() -> None:
    with pytest.raises(DatabaseUnavailableError) as raised:
        await SqlBackend.connect("postgresql://postgres:pw@127.0.0.1:1/stagewise")
    message = one_line(raised.value)
    assert "cannot connect to the database at postgresql+asyncpg://postgres:***@127.0.0.1:1" in (
        message
    )
    assert isinstance(raised.value, TransientError)


@pytest.mark.postgres
async def test_a_database_that_does_not_exist_is_named(pg_module_url: str) -> None:
    missing = make_url(pg_module_url).set(database="stagewise_no_such_db")
    with pytest.raises(PersistenceError) as raised:
        await SqlBackend.connect(missing)
    assert "stagewise_no_such_db" in one_line(raised.value)


async def test_a_sqlite_file_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PersistenceError) as raised:
        await SqlBackend.connect(f"sqlite:///{tmp_path / 'nope' / 'db.sqlite'}")
    assert "cannot open the database" in one_line(raised.value)


async def test_plain_urls_get_the_async_drivers_and_memory_sqlite_works(tmp_path: Path) -> None:
    async with await SqlBackend.connect(sqlite_url(tmp_path)) as backend:
        assert backend.url.startswith("sqlite+aiosqlite:///")
        assert backend.dialect == "sqlite"
    async with await SqlBackend.connect("sqlite://") as memory:
        await memory.blob_store.put("k", b"v")
        assert await memory.blob_store.get("k") == b"v"
        assert await memory.schema_revision() == head_revision()


# --- the schema --------------------------------------------------------------------------


async def test_migrate_false_on_an_empty_database_names_the_missing_table(
    tmp_path: Path,
) -> None:
    sqlite3.connect(tmp_path / "db.sqlite").close()  # an empty file (a missing one: no file)
    with pytest.raises(SchemaMissingError) as raised:
        await SqlBackend.connect(sqlite_url(tmp_path), migrate=False)
    message = one_line(raised.value)
    assert "table 'stagewise_runs' does not exist" in message
    assert "stagewise db upgrade" in message
    assert "migrate=True" in message
    assert raised.value.table == "stagewise_runs"


@pytest.mark.postgres
async def test_migrate_false_on_an_empty_postgres_database_names_the_missing_table(
    fresh_pg: str,
) -> None:
    with pytest.raises(SchemaMissingError) as raised:
        await SqlBackend.connect(fresh_pg, migrate=False)
    assert "stagewise_runs" in one_line(raised.value)


async def stamp(backend: SqlBackend, revision: str) -> None:
    async with backend.engine.begin() as conn:
        await conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = :r"), {"r": revision})


async def test_a_database_from_newer_code_is_refused(tmp_path: Path) -> None:
    backend = await SqlBackend.connect(sqlite_url(tmp_path))
    await stamp(backend, "9999_from_the_future")
    await backend.close()

    for migrate in (True, False):
        with pytest.raises(SchemaVersionError) as raised:
            await SqlBackend.connect(sqlite_url(tmp_path), migrate=migrate)
        message = one_line(raised.value)
        assert "'9999_from_the_future'" in message
        assert "newer stagewise-sql" in message


@pytest.mark.postgres
async def test_a_postgres_database_from_newer_code_is_refused(fresh_pg: str) -> None:
    backend = await SqlBackend.connect(fresh_pg)
    await stamp(backend, "9999_from_the_future")
    await backend.close()

    with pytest.raises(SchemaVersionError) as raised:
        await SqlBackend.connect(fresh_pg)
    assert "9999_from_the_future" in one_line(raised.value)


def _differences(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return list(compare_metadata(context, metadata))


async def test_the_migrated_schema_is_the_schema_module(tmp_path: Path) -> None:
    async with await SqlBackend.connect(sqlite_url(tmp_path)) as backend:
        async with backend.engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
        assert await backend.schema_revision() == head_revision()


@pytest.mark.postgres
async def test_the_migrated_postgres_schema_is_the_schema_module(fresh_pg: str) -> None:
    async with await SqlBackend.connect(fresh_pg) as backend, backend.engine.connect() as conn:
        assert await conn.run_sync(_differences) == []
        isolation = await conn.execute(text("SHOW transaction_isolation"))
        assert isolation.scalar() == "read committed"


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    async with await SqlBackend.connect(url) as backend, backend.engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == 1  # NORMAL


@pytest.mark.postgres
async def test_processes_starting_together_migrate_once(fresh_pg: str) -> None:
    backends = await asyncio.gather(*(SqlBackend.connect(fresh_pg) for _ in range(4)))
    for backend in backends:
        assert await backend.schema_revision() == head_revision()
        await backend.close()


async def test_upgrade_brings_a_database_to_head_and_is_idempotent(tmp_path: Path) -> None:
    assert await upgrade(sqlite_url(tmp_path)) == head_revision()
    assert await upgrade(sqlite_url(tmp_path)) == head_revision()
    async with await SqlBackend.connect(sqlite_url(tmp_path), migrate=False) as backend:
        assert await backend.schema_revision() == head_revision()


def _autogenerate_and_apply(conn: Connection) -> str:
    context = MigrationContext.configure(conn, opts={"target_metadata": metadata})
    script = produce_migrations(context, metadata)
    assert script.upgrade_ops is not None
    code = render_python_code(script.upgrade_ops, render_item=render_item)
    namespace: dict[str, Any] = {
        "op": Operations(context),
        "sa": sqlalchemy,
        "postgresql": postgresql,
    }
    exec(f"def upgrade():\n{code}", namespace)  # the body of the generated revision
    namespace["upgrade"]()
    return code


async def test_an_applications_autogenerate_renders_our_tables_as_plain_sqlalchemy(
    tmp_path: Path,
) -> None:
    engine = create_engine(sqlite_url(tmp_path))
    with engine.begin() as conn:
        code = _autogenerate_and_apply(conn)
        assert "stagewise_sql" not in code
        assert "sa.DateTime(timezone=True)" in code
        assert _differences(conn) == []
    engine.dispose()


async def test_a_schema_managed_by_the_applications_own_alembic_is_used(tmp_path: Path) -> None:
    # The application created our tables itself (from `metadata`), without our version table.
    engine = create_engine(sqlite_url(tmp_path))
    metadata.create_all(engine)
    engine.dispose()

    async with await SqlBackend.connect(sqlite_url(tmp_path), migrate=False) as backend:
        assert await backend.schema_revision() is None
        await backend.blob_store.put("k", b"v")


def test_the_quick_schema_check_knows_the_newest_migration() -> None:
    # `_migrate.HEAD` lets a start skip importing Alembic; it must name the real head.
    from stagewise_sql import _migrate

    assert head_revision() == _migrate.HEAD


def test_opening_a_current_database_does_not_import_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    code = (
        "import asyncio, sys\n"
        "from stagewise_sql import SqlBackend\n"
        "async def main():\n"
        f"    b = await SqlBackend.connect({url!r}, migrate=False)\n"
        "    await b.close()\n"
        "asyncio.run(main())\n"
        "print('alembic' in sys.modules)\n"
    )
    asyncio.run(_migrated(url))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def _migrated(url: str) -> None:
    backend = await SqlBackend.connect(url)
    await backend.close()
