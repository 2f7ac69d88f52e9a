"""Fixtures of the node tests: a database URL per backend, worker processes, a client, and
the command line's database (`db`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.integration.node.flows import SIDE_DB_ENV, create_side_db
from tests.integration.node.processes import Client, Workers


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """An empty database of its own: a SQLite file, or a PostgreSQL database (dropped after,
    with any connection a killed worker left behind)."""
    return empty_db_url


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(url=db_url, tmp=tmp_path, side=tmp_path / "side.db")
    try:
        yield pool
    finally:
        pool.kill_all()


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[Client]:
    c = await Client.open(db_url)  # creates the schema before any worker starts
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite URL for the command line (not created yet), with the side table ready and
    no database or app taken from the environment."""
    create_side_db(tmp_path / "side.db")
    monkeypatch.setenv(SIDE_DB_ENV, str(tmp_path / "side.db"))
    monkeypatch.delenv("STAGEWISE_DATABASE_URL", raising=False)
    monkeypatch.delenv("STAGEWISE_APP", raising=False)
    return f"sqlite:///{tmp_path / 'cli.db'}"
