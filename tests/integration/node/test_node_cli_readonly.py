"""Commands that act on what is in the database never create or migrate one: a mistyped
`--db` is one error line, and nothing is left behind. Commands that write new work (`run`,
`worker`, `db upgrade`) create the schema as before."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import create_pg_database, drop_pg_database
from tests.integration.node.cli_support import APP, one_error_line, stagewise


async def _tables(url: str) -> list[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: inspect(c).get_table_names())
    finally:
        await engine.dispose()


READ_ONLY = [
    ("runs", "list"),
    ("runs", "list", "--status", "failed"),
    ("runs", "show", "some-run"),
    ("runs", "show", "some-run", "--json"),
    ("runs", "logs", "some-run"),
    ("runs", "logs", "some-run", "--follow"),
    ("runs", "list", "--since", "2h", "--meta", "k=v"),
    ("runs", "cancel", "some-run"),
    ("runs", "rerun", "some-run", "--from", "a", "--app", APP),
]


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_a_missing_sqlite_file_is_an_error_and_is_not_created(
    command: tuple[str, ...], tmp_path: Path, db: str
) -> None:
    missing = tmp_path / "typo.db"
    code, out = stagewise(*command, "--db", f"sqlite:///{missing}")
    assert code == 1
    assert one_error_line(out) == f"error: no stagewise database at sqlite+aiosqlite:///{missing}"
    assert list(tmp_path.glob("typo.db*")) == []


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_a_sqlite_file_without_stagewise_tables_is_not_migrated(
    command: tuple[str, ...], tmp_path: Path, db: str
) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    code, out = stagewise(*command, "--db", f"sqlite:///{other}")
    assert code == 1
    assert one_error_line(out) == f"error: no stagewise database at sqlite+aiosqlite:///{other}"
    with sqlite3.connect(other) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert tables == {"notes"}


def test_commands_that_write_create_the_database(tmp_path: Path, db: str) -> None:
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    code, out = stagewise("db", "upgrade", "--db", f"sqlite:///{first}")
    assert code == 0, out
    code, out = stagewise("runs", "list", "--db", f"sqlite:///{first}")
    assert code == 0, out
    assert "0 run(s)" in out
    run = ("run", "three", "--input", '{"n": 1}', "--app", APP)
    code, out = stagewise(*run, "--db", f"sqlite:///{second}")
    assert code == 0, out
    code, out = stagewise("runs", "list", "--db", f"sqlite:///{second}")
    assert "1 run(s)" in out


@pytest.mark.postgres
def test_a_postgresql_database_without_stagewise_tables_is_not_migrated(db: str) -> None:
    url = create_pg_database()
    try:
        secret = make_url(url).update_query_dict({"password": "secret"})
        given = secret.render_as_string(hide_password=False)
        shown = make_url(url).render_as_string(hide_password=True)
        for command in READ_ONLY:
            code, out = stagewise(*command, "--db", given)
            assert code == 1
            assert one_error_line(out) == f"error: no stagewise database at {shown}?password=***"
        assert asyncio.run(_tables(url)) == []
    finally:
        drop_pg_database(url)
