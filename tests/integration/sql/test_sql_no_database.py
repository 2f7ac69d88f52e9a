"""`SqlBackend.connect(url, migrate=False)` creates and changes nothing: where there is no
stagewise database it says so, and leaves no file behind."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from stagewise_sql import SchemaMissingError, SqlBackend
from stagewise_sql._errors import DatabaseNotFoundError


async def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(DatabaseNotFoundError) as raised:
        await SqlBackend.connect(f"sqlite:///{path}", migrate=False)
    message = str(raised.value)
    assert message.startswith(f"no stagewise database at sqlite+aiosqlite:///{path} (no such")
    assert "stagewise db upgrade" in message
    assert isinstance(raised.value, SchemaMissingError)  # what callers caught before
    assert os.listdir(tmp_path) == []


async def test_a_file_without_stagewise_tables_is_no_stagewise_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    sqlite3.connect(path).close()  # an empty file
    with pytest.raises(DatabaseNotFoundError):
        await SqlBackend.connect(f"sqlite:///{path}", migrate=False)


async def test_with_migrate_the_database_is_created_and_then_opens_without(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    await (await SqlBackend.connect(url)).close()
    backend = await SqlBackend.connect(url, migrate=False)
    await backend.close()
