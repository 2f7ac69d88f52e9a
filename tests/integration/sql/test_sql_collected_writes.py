"""A transaction's writes are collected and sent together (PostgreSQL: one statement, `_pg`;
SQLite: with the next read or the commit, `_lite`): what a caller sees must not change.
Each test runs on both SQL backends unless marked, so the two must agree."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace

import pytest
from sqlalchemy import text

from stagewise._errors import DuplicateRecordError
from stagewise._records import Delivery
from stagewise._states import RunStatus, StageStatus
from stagewise_sql._counting import counting
from tests.conftest import Adapters
from tests.contract.factories import events_of, run, stage


async def test_a_run_inserted_then_saved_is_stored_in_its_last_state(
    sql_backend: Adapters,
) -> None:
    async with sql_backend.persistence.transaction() as tx:
        await tx.runs.insert(run("r1"))
        await tx.runs.save(replace(run("r1"), status=RunStatus.RUNNING, event_seq=2))
        await tx.runs.save_many([replace(run("r1"), status=RunStatus.RUNNING, event_seq=3)])
        await tx.stages.save_many([stage("r1", "a"), stage("r1", "b")])
        await tx.stages.save_many([stage("r1", "a", status=StageStatus.RUNNING, attempt=2)])
    async with sql_backend.persistence.transaction() as tx:
        got = await tx.runs.get("r1")
        stages = {s.stage_id: s for s in await tx.stages.for_run("r1")}
    assert got is not None
    assert (got.status, got.event_seq) == (RunStatus.RUNNING, 3)
    assert (stages["a"].status, stages["a"].attempt) == (StageStatus.RUNNING, 2)
    assert stages["b"].status is StageStatus.PENDING


async def test_reads_in_the_transaction_see_its_writes(sql_backend: Adapters) -> None:
    async with sql_backend.persistence.transaction() as tx:
        await tx.runs.insert(run("r1"))
        await tx.stages.save_many([stage("r1", "a")])
        # the driver's reads (lock_many, for_runs) and SQLAlchemy's (get, find, for_run)
        assert [r.run_id for r in await tx.runs.lock_many(["r1"])] == ["r1"]
        assert [s.stage_id for s in await tx.stages.for_runs(["r1"])] == ["a"]
        await tx.runs.save(replace(run("r1"), event_seq=5))
        assert [r.event_seq for r in await tx.runs.find()] == [5]
        await tx.stages.save_many([stage("r1", "b")])
        assert [s.stage_id for s in await tx.stages.for_run("r1")] == ["a", "b"]
        await tx.stages.delete("r1", ["a"])  # deletes go after the collected upsert
        assert [s.stage_id for s in await tx.stages.for_run("r1")] == ["b"]


async def test_inserting_a_run_twice_in_one_transaction_is_refused(sql_backend: Adapters) -> None:
    async def twice() -> None:
        async with sql_backend.persistence.transaction() as tx:
            await tx.runs.insert(run("r1"))
            await tx.runs.insert(run("r1"))

    with pytest.raises(DuplicateRecordError):
        await twice()
    async with sql_backend.persistence.transaction() as tx:
        assert await tx.runs.get("r1") is None


async def test_a_write_refused_at_commit_leaves_nothing_of_the_transaction(
    sql_backend: Adapters,
) -> None:
    [event] = events_of("r1", [1])
    delivery = Delivery(event_id=event.event_id, consumer="sink", run_id="r1", seq=1)
    async with sql_backend.persistence.transaction() as tx:
        await tx.runs.insert(run("r1"))
        await tx.outbox.append([event], [delivery])

    async def again() -> None:
        async with sql_backend.persistence.transaction() as tx:
            await tx.runs.insert(run("r2"))
            await tx.stages.save_many([stage("r1", "a")])
            await tx.outbox.append([event], [delivery])  # the same event id

    with pytest.raises(DuplicateRecordError):
        await again()
    async with sql_backend.persistence.transaction() as tx:
        assert await tx.runs.get("r2") is None
        assert await tx.stages.for_run("r1") == []
        assert len(await tx.outbox.events("r1")) == 1
    # and the connection went back clean: the next transactions work
    for _ in range(5):
        async with sql_backend.persistence.transaction() as tx:
            assert await tx.runs.get("r1") is not None


@pytest.mark.postgres
async def test_a_transaction_writes_its_rows_in_one_statement(pg_backend: Adapters) -> None:
    assert pg_backend.sql is not None
    evs = events_of("r1", [1, 2])
    async with pg_backend.persistence.transaction() as tx:  # warm: asyncpg's type lookups
        await tx.runs.insert(run("r0"))
        await tx.stages.save_many([stage("r0", "a")])
    with counting(pg_backend.sql.engine.sync_engine) as counts:
        async with pg_backend.persistence.transaction() as tx:
            await tx.runs.insert(run("r1"))
            await tx.runs.save_many([run("r0")])
            await tx.stages.save_many([stage("r1", "a"), stage("r0", "a")])
            await tx.outbox.append(
                evs,
                [
                    Delivery(event_id=e.event_id, consumer="sink", run_id="r1", seq=e.seq)
                    for e in evs
                ],
            )
    assert (counts.commits, counts.statements) == (1, 1), counts.shapes
    async with pg_backend.persistence.transaction() as tx:
        assert len(await tx.stages.for_runs(["r0", "r1"])) == 2
        assert len(await tx.outbox.events("r1")) == 2


async def test_a_cancelled_transaction_rolls_back_and_frees_its_connection(
    sql_backend: Adapters,
) -> None:
    assert sql_backend.sql is not None
    async with sql_backend.persistence.transaction() as tx:
        await tx.runs.insert(run("r1"))
    inside = asyncio.Event()

    async def hold() -> None:
        async with sql_backend.persistence.transaction() as tx:
            await tx.runs.lock_many(["r1"])  # a row lock (SQLite: the write lock)
            await tx.runs.save(replace(run("r1"), event_seq=9))
            await tx.stages.for_runs(["r1"])  # the save goes out with this read
            inside.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(hold())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):  # the lock is gone and the write with it
        async with sql_backend.persistence.transaction() as tx:
            [again] = await tx.runs.lock_many(["r1"])
    assert again.event_seq == 0
    # and no pooled connection was handed back inside a transaction
    if sql_backend.name == "sqlite":  # another process can take the write lock at once
        other = sqlite3.connect(sql_backend.sql.engine.url.database or "", timeout=1)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        finally:
            other.close()
        return
    async with sql_backend.sql.engine.connect() as conn:
        idle_in_tx = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'"
            )
        )
    assert idle_in_tx == 0
