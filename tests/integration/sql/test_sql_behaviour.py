"""What only the SQL adapters do: translate driver errors, retry what is safe, keep times in
UTC, wake job waiters, and stay usable after cancellations and lost connections."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from stagewise._errors import (
    ConcurrentUpdateError,
    ConflictError,
    InvalidInputError,
    PersistenceError,
    TransactionConflictError,
    TransientError,
)
from stagewise._records import Changeset, RunWrite
from stagewise._states import StageStatus
from stagewise.testing import FakeClock, InMemoryPersistence
from stagewise_sql import DuplicateRecordError, SqlBackend, SqlSettings
from tests.conftest import Adapters
from tests.contract.factories import T0, at, insert, job, run, stage


async def test_a_duplicate_insert_is_a_conflict_not_a_driver_error(sql_backend: Adapters) -> None:
    async with sql_backend.persistence.transaction() as tx:
        await insert(tx, run("r1"))

    async def again() -> None:
        async with sql_backend.persistence.transaction() as tx:
            await insert(tx, run("r1"))

    with pytest.raises(DuplicateRecordError) as raised:
        await again()
    assert isinstance(raised.value, ConflictError)
    assert raised.value.__cause__ is not None


async def test_a_naive_datetime_is_refused(sql_backend: Adapters) -> None:
    async def insert_naive() -> None:
        async with sql_backend.persistence.transaction() as tx:
            await insert(tx, run("r1", updated_at=T0.replace(tzinfo=None)))

    with pytest.raises(InvalidInputError, match="naive datetime"):
        await insert_naive()


async def test_times_in_any_zone_come_back_as_the_same_instant_in_utc(
    sql_backend: Adapters,
) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = (T0 + timedelta(seconds=90)).astimezone(plus_two)
    async with sql_backend.persistence.transaction() as tx:
        await insert(
            tx,
            run("r1", status=run("x").status),
            stages=[stage("r1", "a", status=StageStatus.SUSPENDED, due_at=local)],
        )
    async with sql_backend.persistence.transaction() as tx:
        (got,) = await tx.stages.for_run("r1")
        due = await tx.stages.due_for_poll(at(90), 10)

    assert got.due_at == local
    assert got.due_at is not None
    assert got.due_at.utcoffset() == timedelta(0)
    assert [s.stage_id for s in due] == ["a"]


async def test_a_cancelled_transaction_gives_back_its_connection_and_lock(
    sql_backend: Adapters,
) -> None:
    started = asyncio.Event()

    async def slow() -> None:
        async with sql_backend.persistence.transaction() as tx:
            await insert(tx, run("r1"))
            assert await tx.runs.get("r1") is not None  # the insert went out with this read
            started.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with asyncio.timeout(5):
        async with sql_backend.persistence.transaction() as tx:
            assert await tx.runs.get("r1") is None
            await insert(tx, run("r2"))


async def test_blob_and_transport_calls_inside_a_transaction_do_not_deadlock(
    sql_backend: Adapters,
) -> None:
    async with asyncio.timeout(5):
        async with sql_backend.persistence.transaction() as tx:
            await insert(tx, run("r1"))
            await sql_backend.blob_store.put("runs/r1/output", b"big")
            await sql_backend.job_transport.enqueue([job("j1", "r1")])
    assert await sql_backend.blob_store.get("runs/r1/output") == b"big"
    assert len(await sql_backend.job_transport.dequeue(worker_id="w", limit=5, lease_for=9)) == 1


async def test_a_nested_transaction_on_sqlite_is_refused_not_hung(tmp_path: Path) -> None:
    async with await SqlBackend.connect(f"sqlite:///{tmp_path / 'db.sqlite'}") as backend:

        async def nested() -> None:
            async with backend.persistence.transaction(), backend.persistence.transaction():
                pass

        with pytest.raises(PersistenceError, match="inside another one"):
            await asyncio.wait_for(nested(), 5)


async def test_a_sqlite_database_locked_by_another_process_is_a_transient_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    settings = SqlSettings(busy_timeout=0.05)
    backend = await SqlBackend.connect(f"sqlite:///{path}", settings=settings)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock

        async def write() -> None:
            async with backend.persistence.transaction() as tx:
                await insert(tx, run("r1"))

        began = time.monotonic()
        with pytest.raises(TransientError, match="database is locked"):
            await write()
        assert time.monotonic() - began > 0.15  # BEGIN was retried a few times first

        other.execute("ROLLBACK")
        await write()
    finally:
        other.close()
        await backend.close()


@pytest.mark.postgres
async def test_a_deadlock_is_a_transaction_conflict(pg_backend: Adapters) -> None:
    async with pg_backend.persistence.transaction() as tx:
        await insert(tx, run("a"), run("b"))
    both_locked = asyncio.Barrier(2)

    async def lock(first: str, second: str) -> None:
        # One run per load: each load locks in id order, two loads in a row need not.
        async with pg_backend.persistence.transaction() as tx:
            await tx.runs.load([first])
            await both_locked.wait()
            await tx.runs.load([second])

    results = await asyncio.gather(lock("a", "b"), lock("b", "a"), return_exceptions=True)

    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1  # the database chose one victim; the other went on
    assert isinstance(errors[0], TransactionConflictError)  # the kernel tries it again
    assert isinstance(errors[0], TransientError)
    assert "deadlock" in str(errors[0]) and "[40P01]" in str(errors[0])


@pytest.mark.postgres
async def test_connections_killed_by_the_server_are_replaced(pg_backend: Adapters) -> None:
    assert pg_backend.sql is not None
    async with pg_backend.persistence.transaction() as tx:
        await insert(tx, run("r1"))
    await pg_backend.blob_store.put("k", b"v")  # the pool now holds idle connections

    killer = await SqlBackend.connect(pg_backend.url or "")
    async with killer.engine.connect() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    await killer.close()

    async with pg_backend.persistence.transaction() as tx:  # first statement replayed
        assert await tx.runs.get("r1") is not None
    assert await pg_backend.blob_store.get("k") == b"v"  # a read is replayed too


async def test_wait_for_jobs_wakes_on_an_enqueue_and_times_out_otherwise(
    sql_backend: Adapters,
) -> None:
    assert sql_backend.sql is not None
    transport = sql_backend.sql.job_transport
    assert await transport.wait_for_jobs(0.01) is False

    waiter = asyncio.create_task(transport.wait_for_jobs(10))
    await asyncio.sleep(0.05)
    async with sql_backend.persistence.transaction() as tx:
        await transport.enqueue([job("j1")], tx=tx)
    async with asyncio.timeout(5):
        assert await waiter is True

    await transport.enqueue([job("j2")])  # nobody waiting: the sign is kept
    assert await transport.wait_for_jobs(0) is True
    assert await transport.wait_for_jobs(0.01) is False


@pytest.mark.postgres
async def test_wait_for_jobs_hears_enqueues_from_other_processes(pg_backend: Adapters) -> None:
    assert pg_backend.sql is not None
    transport = pg_backend.sql.job_transport
    await transport.wait_for_jobs(0)  # starts listening
    other = await SqlBackend.connect(pg_backend.url or "", clock=pg_backend.clock)
    try:
        waiter = asyncio.create_task(transport.wait_for_jobs(10))
        await asyncio.sleep(0.05)
        await other.job_transport.enqueue([job("j1")])
        async with asyncio.timeout(5):
            assert await waiter is True
    finally:
        await other.close()


@pytest.mark.postgres
async def test_wait_for_runs_hears_runs_created_by_other_processes(pg_backend: Adapters) -> None:
    assert pg_backend.sql is not None
    transport = pg_backend.sql.job_transport
    assert await transport.wait_for_runs(0) is False  # starts listening
    async with pg_backend.persistence.transaction() as tx:
        await insert(tx, run("ours"))  # our own insert: no echo
    assert await transport.wait_for_runs(0.2) is False
    other = await SqlBackend.connect(pg_backend.url or "", clock=pg_backend.clock)
    try:
        waiter = asyncio.create_task(transport.wait_for_runs(10))
        await asyncio.sleep(0.05)
        async with other.persistence.transaction() as tx:
            await insert(tx, run("theirs"))
        async with asyncio.timeout(5):
            assert await waiter is True
    finally:
        await other.close()


async def test_a_sqlite_file_wakes_waiters_on_runs_and_due_jobs_from_other_connections(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'watched.db'}"
    clock = FakeClock(T0)
    ours = await SqlBackend.connect(url, clock=clock)
    other = await SqlBackend.connect(url, clock=clock)  # as another process would
    transport = ours.job_transport
    try:
        assert await transport.wait_for_runs(0.05) is False
        assert await transport.wait_for_jobs(0.05) is False
        async with other.persistence.transaction() as tx:
            await insert(tx, run("r1"))
        async with asyncio.timeout(5):
            assert await transport.wait_for_runs(5) is True
        await other.job_transport.enqueue([job("later", available=60)])
        assert await transport.wait_for_jobs(0.2) is False  # not deliverable yet
        await other.job_transport.enqueue([job("now")])
        async with asyncio.timeout(5):
            assert await transport.wait_for_jobs(5) is True
    finally:
        await other.close()
        await ours.close()


async def test_a_run_write_for_a_run_that_does_not_exist_is_refused_like_the_reference(
    sql_backend: Adapters,
) -> None:
    missing = RunWrite(replace(run("r1"), version=2), expected_version=1)
    changes = Changeset(runs=(missing,), stages=(replace(stage("r1", "a"), attempt=2),))

    for persistence in (sql_backend.persistence, InMemoryPersistence()):
        with pytest.raises(ConcurrentUpdateError):  # there is no version 1 to write over
            async with persistence.transaction() as tx:
                await tx.apply(changes)
        async with persistence.transaction() as tx:
            assert await tx.runs.get("r1") is None
            assert await tx.stages.for_run("r1") == []


async def test_a_task_started_inside_a_transaction_writes_on_its_own_after_it_ends(
    sql_backend: Adapters,
) -> None:
    go = asyncio.Event()

    async def background() -> None:
        await go.wait()
        await sql_backend.blob_store.put("k", b"v")
        async with sql_backend.persistence.transaction() as tx:
            await insert(tx, run("r2"))

    async with sql_backend.persistence.transaction() as tx:
        await insert(tx, run("r1"))
        task = asyncio.create_task(background())
    go.set()
    await asyncio.wait_for(task, 5)

    assert await sql_backend.blob_store.get("k") == b"v"
    async with sql_backend.persistence.transaction() as tx:
        assert await tx.runs.get("r2") is not None


async def test_a_json_value_postgres_cannot_store_is_invalid_input(sql_backend: Adapters) -> None:
    # JSONB has no NUL character; SQLite (like the in-memory reference) keeps it.
    async def insert_nul() -> None:
        async with sql_backend.persistence.transaction() as tx:
            await insert(tx, run("r1", input={"text": "a\u0000b"}))

    if sql_backend.name == "postgres":
        with pytest.raises(InvalidInputError, match="the database refused a value"):
            await insert_nul()
    else:
        await insert_nul()
        async with sql_backend.persistence.transaction() as tx:
            got = await tx.runs.get("r1")
        assert got is not None
        assert got.input == {"text": "a\u0000b"}
