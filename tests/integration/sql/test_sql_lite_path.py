"""SQLite's hot path (`stagewise_sql._lite`): a transaction's statements go to aiosqlite's
thread in one call per step, on the driver directly. What it stores and how it ends a
transaction must be exactly what SQLAlchemy would have done."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from stagewise import RunStatus
from stagewise._records import Changeset, ErrorInfo, RunRecord, RunWrite
from stagewise_sql import _lite, _rows
from stagewise_sql._counting import counting
from stagewise_sql._schema import runs as runs_t
from stagewise_sql._schema import stages as stages_t
from tests.conftest import Adapters
from tests.contract.factories import insert, run, stage
from tests.contract.test_kernel_scenarios import make_env
from tests.contract.test_round_trip_budget import three_stages
from tests.integration.sql.test_sql_held_changeset import (
    test_inserting_a_run_twice_in_one_transaction_is_refused as inserting_twice_is_refused,
)

pytestmark = pytest.mark.parametrize("sql_backend", ["sqlite"], indirect=True)

T0 = datetime(2026, 11, 21, 9, 30, 15, 250_000, tzinfo=UTC)


def full_run(run_id: str) -> RunRecord:
    """A run with every optional field set: times, JSON values, an error."""
    return replace(
        run(run_id),
        status=RunStatus.FAILED,
        input={"n": 1, "nested": [1, "two", None]},
        config={"k": "v"},
        output={"ok": False},
        output_ref="blob://x",
        error=ErrorInfo(type="ValueError", message="bad", retryable=False),
        idempotency_key="key-1",
        created_at=T0,
        updated_at=T0 + timedelta(seconds=1),
        started_at=T0 + timedelta(microseconds=1),
        finished_at=T0 + timedelta(days=1),
    )


async def test_the_hot_path_stores_values_exactly_as_sqlalchemy_does(
    sql_backend: Adapters,
) -> None:
    assert sql_backend.sql is not None
    engine = sql_backend.sql.engine
    async with sql_backend.persistence.transaction() as tx:  # the hot path
        await insert(
            tx, full_run("by-path"), stages=[replace(stage("by-path", "a"), lease_expires_at=T0)]
        )
    async with engine.begin() as conn:  # SQLAlchemy
        await conn.execute(runs_t.insert(), _rows.run_values(full_run("by-sqlalchemy")))
        values = _rows.stage_values(replace(stage("by-sqlalchemy", "a"), lease_expires_at=T0))
        await conn.execute(stages_t.insert(), values)

    raw = sqlite3.connect(engine.url.database or "")
    try:
        runs = raw.execute("SELECT * FROM stagewise_runs ORDER BY run_id").fetchall()
        stages = raw.execute("SELECT * FROM stagewise_stages ORDER BY run_id").fetchall()
    finally:
        raw.close()
    assert [r[1:] for r in runs[:1]] == [r[1:] for r in runs[1:]]
    assert [s[1:] for s in stages[:1]] == [s[1:] for s in stages[1:]]

    async with sql_backend.persistence.transaction() as tx:  # and both read back the same
        [(a, a_stages), (b, b_stages)] = await tx.runs.load(["by-path", "by-sqlalchemy"])
    assert replace(a, run_id="x") == replace(b, run_id="x") == full_run("x")
    assert a_stages[0].lease_expires_at == b_stages[0].lease_expires_at == T0


async def test_times_written_on_the_path_compare_with_sqlalchemy_parameters(
    sql_backend: Adapters,
) -> None:
    """Times are text on SQLite; the path writes the same fixed-width text, so queries
    bound through SQLAlchemy compare them in time order."""
    assert sql_backend.sql is not None
    async with sql_backend.persistence.transaction() as tx:
        await insert(tx, full_run("r1"))
    async with sql_backend.sql.engine.connect() as conn:
        before = await conn.scalar(select(runs_t.c.run_id).where(runs_t.c.created_at < T0))
        at = await conn.scalar(select(runs_t.c.run_id).where(runs_t.c.created_at == T0))
    assert (before, at) == (None, "r1")


async def test_each_step_is_one_trip_to_the_driver_thread(sql_backend: Adapters) -> None:
    async with sql_backend.persistence.transaction() as tx:
        await insert(tx, run("r1"))
    with counting() as counts:
        async with sql_backend.persistence.transaction() as tx:
            [(locked, _)] = await tx.runs.load(["r1"])
            moved = replace(locked, event_seq=1, version=locked.version + 1)
            await tx.apply(
                Changeset(
                    runs=(RunWrite(moved, expected_version=locked.version),),
                    stages=(stage("r1", "a"), stage("r1", "b")),
                )
            )
    # BEGIN; both reads; the two writes with COMMIT
    assert (counts.trips, counts.statements, counts.commits) == (3, 4, 1), counts.shapes


@pytest.fixture
def call_by_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path as it runs on an aiosqlite without a way to queue a function on its thread:
    one public call per statement."""
    monkeypatch.setattr(_lite, "_queue_of", lambda aio: None)


@pytest.mark.usefixtures("call_by_call")
async def test_call_by_call_a_workflow_runs_to_completion(sql_backend: Adapters) -> None:
    env = make_env(sql_backend, [three_stages()])
    with counting() as counts:
        done = await env.run("three", {"n": 0})
    assert done.status is RunStatus.COMPLETED
    assert done.output == {"n": 3}
    assert counts.trips > counts.commits * 3  # it did go statement by statement


@pytest.mark.usefixtures("call_by_call")
async def test_call_by_call_a_duplicate_rolls_back_the_transaction(sql_backend: Adapters) -> None:
    await inserting_twice_is_refused(sql_backend)
