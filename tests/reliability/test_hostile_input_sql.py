"""Hostile input against the real databases: refused with a typed error, no row written.

The same hostile commands as `test_hostile_input.py`, dispatched to a kernel on SQLite and
on PostgreSQL, whose every table is read before and after each one. PostgreSQL refuses some
values the others accept (a NUL character in JSON text): that too must come back as a
typed error with nothing written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from stagewise import Kernel, KernelSettings, StagewiseError, WorkflowRegistry, create_kernel
from stagewise.testing import FakeClock, NoopEventSink, NoopScheduler
from stagewise_sql import SqlBackend, metadata
from tests.conftest import create_pg_database, drop_pg_database
from tests.reliability.test_hostile_input import LIMIT, _semantic, _structural, checkout, free


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'hostile.db'}"
        return
    pg = create_pg_database()
    try:
        yield pg
    finally:
        drop_pg_database(pg)


async def _everything(backend: SqlBackend) -> dict[str, list[Any]]:
    async with backend.engine.connect() as conn:
        return {
            table.name: sorted(map(tuple, await conn.execute(select(table))), key=repr)
            for table in metadata.sorted_tables
        }


def _kernel(backend: SqlBackend) -> Kernel:
    return create_kernel(
        persistence=backend.persistence,
        blob_store=backend.blob_store,
        job_transport=backend.job_transport,
        event_sink=NoopEventSink(),
        scheduler=NoopScheduler(),
        clock=backend.clock,
        registry=WorkflowRegistry([checkout, free]),
        settings=KernelSettings(max_payload_bytes=LIMIT),
    )


nul_input = st.text(min_size=0, max_size=5).map(
    lambda t: {"type": "run.create", "workflow_id": "free", "input": {"note": t + "\x00"}}
)


def hostile() -> st.SearchStrategy[dict[str, Any]]:
    commands = ["run.create", "job.execute", "run.cancel", "run.rerunFrom"]
    return st.one_of(
        nul_input,
        *(_structural(c) for c in commands),
        *(_semantic(c) for c in commands),
    )


def test_hostile_commands_write_no_row_on_sqlite_and_postgresql(url: str) -> None:
    with asyncio.Runner() as runner:
        backend = runner.run(SqlBackend.connect(url, clock=FakeClock()))
        kernel = _kernel(backend)
        before = runner.run(_everything(backend))

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(hostile())
        def check(command: dict[str, Any]) -> None:
            with pytest.raises(StagewiseError) as refused:
                runner.run(kernel.dispatch(command))
            assert refused.value.message
            assert runner.run(_everything(backend)) == before, "a row was written"

        try:
            check()
        finally:
            runner.run(kernel.aclose())
            runner.run(backend.close())
