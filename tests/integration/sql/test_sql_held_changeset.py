"""A transaction's changeset is held and sent with its next statement or its commit
(PostgreSQL: one statement, `_pg`; SQLite: in the trip of the next read or the commit,
`_lite`; see `_writes.PendingWrites`): what a caller sees must not change. Each test runs
on both SQL backends unless marked, so the two must agree."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace

import pytest
from sqlalchemy import text

from stagewise._errors import ConcurrentUpdateError, DuplicateRecordError
from stagewise._records import Changeset, RunRecord, RunWrite
from stagewise._states import RunStatus, StageStatus
from stagewise_sql._counting import counting
from tests.conftest import Adapters
from tests.contract.factories import (
    delivery,
    event,
    events_of,
    idem,
    insert,
    log,
    logs_of,
    run,
    stage,
)


def update(before: RunRecord, after: RunRecord) -> RunWrite:
    """`after` written over `before`, at the next version."""
    return RunWrite(replace(after, version=before.version + 1), expected_version=before.version)


async def test_a_changeset_is_held_until_the_next_statement_and_goes_out_before_it(
    sql_backend: Adapters,
) -> None:
    assert sql_backend.sql is not None

    async def sent() -> int:
        await asyncio.sleep(0)  # asyncpg reports a statement on the loop's next turn
        return counts.statements

    # counting from before the transaction: PostgreSQL's driver is hooked at checkout
    with counting(sql_backend.sql.engine.sync_engine) as counts:
        async with sql_backend.persistence.transaction() as tx:
            await insert(tx, run("r1"), stages=[stage("r1", "a")])
            sent_by_apply = await sent()
            loaded = await tx.runs.load(["r1"])
            sent_by_the_read = await sent()
    assert sent_by_apply == 0
    assert sent_by_the_read > 1  # the changeset, then the read
    assert loaded == [(run("r1"), [stage("r1", "a")])]


async def test_changesets_applied_in_one_transaction_go_out_in_the_order_applied(
    sql_backend: Adapters,
) -> None:
    # Each update expects the version the changeset before it wrote: out of order, or
    # merged, they would be refused.
    started = update(run("r1"), replace(run("r1"), status=RunStatus.RUNNING, event_seq=2))
    moved_on = update(started.run, replace(started.run, event_seq=3))
    async with sql_backend.persistence.transaction() as tx:
        await insert(tx, run("r1"), stages=[stage("r1", "a"), stage("r1", "b")])
        await tx.apply(Changeset(runs=(started,)))
        await tx.apply(
            Changeset(
                runs=(moved_on,),
                stages=(stage("r1", "a", status=StageStatus.RUNNING, attempt=2),),
            )
        )
    async with sql_backend.persistence.transaction() as tx:
        got = await tx.runs.get("r1")
        stages = {s.stage_id: s for s in await tx.stages.for_run("r1")}
    assert got is not None
    assert (got.status, got.event_seq, got.version) == (RunStatus.RUNNING, 3, 3)
    assert (stages["a"].status, stages["a"].attempt) == (StageStatus.RUNNING, 2)
    assert stages["b"].status is StageStatus.PENDING


async def test_reads_in_the_transaction_see_its_writes(sql_backend: Adapters) -> None:
    async with sql_backend.persistence.transaction() as tx:
        await insert(tx, run("r1"), stages=[stage("r1", "a")])
        # the driver's reads (load, claim_pending) and SQLAlchemy's (get, find, for_run)
        loaded = await tx.runs.load(["r1"])
        assert [(r.run_id, [s.stage_id for s in ss]) for r, ss in loaded] == [("r1", ["a"])]
        await tx.apply(Changeset(runs=(update(run("r1"), replace(run("r1"), event_seq=5)),)))
        assert [r.event_seq for r in await tx.runs.claim_pending(10)] == [5]
        assert [r.event_seq for r in await tx.runs.find()] == [5]
        await tx.apply(Changeset(stages=(stage("r1", "b"),)))
        assert [s.stage_id for s in await tx.stages.for_run("r1")] == ["a", "b"]
        await tx.apply(Changeset(deleted_stages=(("r1", "a"),)))
        assert [s.stage_id for s in await tx.stages.for_run("r1")] == ["b"]


async def test_stages_deleted_and_upserted_in_one_changeset(sql_backend: Adapters) -> None:
    async with sql_backend.persistence.transaction() as tx:
        await insert(tx, run("r1"), stages=[stage("r1", "a"), stage("r1", "b"), stage("r1", "c")])

    async with sql_backend.persistence.transaction() as tx:
        await tx.apply(
            Changeset(
                deleted_stages=(("r1", "a"), ("r1", "c")),
                stages=(stage("r1", "b", attempt=2), stage("r1", "d")),
            )
        )
        inside = [(s.stage_id, s.attempt) for s in await tx.stages.for_run("r1")]
    async with sql_backend.persistence.transaction() as tx:
        committed = [(s.stage_id, s.attempt) for s in await tx.stages.for_run("r1")]
        # and across two changesets, the later one wins
        await tx.apply(Changeset(stages=(stage("r1", "a", attempt=3),)))
        await tx.apply(Changeset(deleted_stages=(("r1", "d"),), stages=(stage("r1", "c"),)))
    async with sql_backend.persistence.transaction() as tx:
        last = [(s.stage_id, s.attempt) for s in await tx.stages.for_run("r1")]

    assert inside == committed == [("b", 2), ("d", 1)]
    assert last == [("a", 3), ("b", 2), ("c", 1)]


async def test_inserting_a_run_twice_in_one_transaction_is_refused(sql_backend: Adapters) -> None:
    async def twice() -> None:
        async with sql_backend.persistence.transaction() as tx:
            await insert(tx, run("r1"))
            await insert(tx, run("r1"))

    with pytest.raises(DuplicateRecordError):
        await twice()
    async with sql_backend.persistence.transaction() as tx:
        assert await tx.runs.get("r1") is None


async def test_a_write_refused_at_commit_leaves_nothing_of_the_transaction(
    sql_backend: Adapters,
) -> None:
    [ev] = events_of("r1", [1])
    async with sql_backend.persistence.transaction() as tx:
        await tx.apply(Changeset(new_runs=(run("r1"),), events=(ev,), deliveries=(delivery(ev),)))

    async def again() -> None:
        async with sql_backend.persistence.transaction() as tx:
            await tx.apply(
                Changeset(
                    new_runs=(run("r2"),),
                    stages=(stage("r1", "a"),),
                    events=(ev,),  # the same event id
                    deliveries=(delivery(ev),),
                    logs=(log("r1", "lost"),),
                    idempotency=(idem("k1"),),
                )
            )

    with pytest.raises(DuplicateRecordError):
        await again()
    async with sql_backend.persistence.transaction() as tx:
        assert await tx.runs.get("r2") is None
        assert await tx.stages.for_run("r1") == []
        assert len(await tx.outbox.events("r1")) == 1
        assert await tx.idempotency.get("run.create", "k1") is None
    assert await logs_of(sql_backend, "r1") == []
    # and the connection went back clean: the next transactions work
    for _ in range(5):
        async with sql_backend.persistence.transaction() as tx:
            assert await tx.runs.get("r1") is not None


async def test_a_write_refused_at_the_next_read_fails_there_and_leaves_nothing(
    sql_backend: Adapters,
) -> None:
    async with sql_backend.persistence.transaction() as tx:
        await insert(tx, run("r1"))
    reached: list[str] = []

    async def again() -> None:
        async with sql_backend.persistence.transaction() as tx:
            await insert(tx, run("r2"), run("r1"), stages=[stage("r2", "a")])
            reached.append("applied")
            await tx.runs.load(["r1", "r2"])
            reached.append("read")

    with pytest.raises(DuplicateRecordError):
        await again()
    assert reached == ["applied"]
    async with sql_backend.persistence.transaction() as tx:
        assert await tx.runs.get("r2") is None
        assert await tx.stages.for_run("r2") == []


async def stale_changeset(sql_backend: Adapters) -> Changeset:
    """Runs r1 (at version 2) and r2 (at version 1, with stage `a`) committed, and a
    changeset that writes everything it can, with an update of r1 made on version 1."""
    async with sql_backend.persistence.transaction() as tx:
        await insert(tx, run("r1"), run("r2"), stages=[stage("r2", "a")])
    async with sql_backend.persistence.transaction() as tx:
        await tx.apply(Changeset(runs=(update(run("r1"), replace(run("r1"), priority=5)),)))
    ev = event("r3", 1)
    return Changeset(
        new_runs=(run("r3"),),
        runs=(
            update(run("r2"), replace(run("r2"), priority=9)),  # still at its version
            update(run("r1"), replace(run("r1"), priority=9)),  # made on version 1, now 2
        ),
        stages=(stage("r3", "a"), stage("r2", "b")),
        deleted_stages=(("r2", "a"),),
        events=(ev,),
        deliveries=(delivery(ev),),
        logs=(log("r3", "lost"),),
        idempotency=(idem("k1"),),
    )


async def assert_nothing_of_the_stale_changeset_was_written(sql_backend: Adapters) -> None:
    async with sql_backend.persistence.transaction() as tx:  # a fresh transaction
        assert await tx.runs.load(["r1", "r2", "r3"]) == [
            (replace(run("r1"), priority=5, version=2), []),
            (run("r2"), [stage("r2", "a")]),
        ]
        assert await tx.outbox.events("r3") == []
        assert await tx.idempotency.get("run.create", "k1") is None
    assert await logs_of(sql_backend, "r3") == []


async def test_a_stale_run_write_fails_the_transaction_at_commit_and_writes_nothing(
    sql_backend: Adapters,
) -> None:
    changes = await stale_changeset(sql_backend)

    async def write() -> None:
        async with sql_backend.persistence.transaction() as tx:
            await tx.apply(changes)

    with pytest.raises(ConcurrentUpdateError) as raised:
        await write()
    assert "r1" in raised.value.run_ids
    await assert_nothing_of_the_stale_changeset_was_written(sql_backend)


async def test_a_stale_run_write_fails_at_the_next_read_and_its_transaction_writes_nothing(
    sql_backend: Adapters,
) -> None:
    changes = await stale_changeset(sql_backend)
    reached: list[str] = []

    async def write() -> None:
        async with sql_backend.persistence.transaction() as tx:
            await tx.apply(changes)
            reached.append("applied")
            await tx.runs.get("r3")
            reached.append("read")

    with pytest.raises(ConcurrentUpdateError):
        await write()
    assert reached == ["applied"]
    await assert_nothing_of_the_stale_changeset_was_written(sql_backend)


@pytest.mark.postgres
async def test_a_transaction_writes_its_rows_in_one_statement(pg_backend: Adapters) -> None:
    assert pg_backend.sql is not None
    evs = events_of("r1", [1, 2])
    async with pg_backend.persistence.transaction() as tx:  # warm: asyncpg's type lookups
        await insert(tx, run("r0"), stages=[stage("r0", "a"), stage("r0", "b")])
    with counting(pg_backend.sql.engine.sync_engine) as counts:
        async with pg_backend.persistence.transaction() as tx:
            await tx.apply(
                Changeset(
                    new_runs=(run("r1"),),
                    runs=(update(run("r0"), replace(run("r0"), event_seq=2)),),
                    stages=(stage("r1", "a"), stage("r0", "a", attempt=2)),
                    deleted_stages=(("r0", "b"),),
                    events=tuple(evs),
                    deliveries=tuple(delivery(e) for e in evs),
                    logs=(log("r1", "hello"),),
                    idempotency=(idem("k1"),),
                )
            )
    assert (counts.commits, counts.statements) == (1, 1), counts.shapes
    async with pg_backend.persistence.transaction() as tx:
        loaded = await tx.runs.load(["r0", "r1"])
        assert [(s.run_id, s.stage_id, s.attempt) for _, ss in loaded for s in ss] == [
            ("r0", "a", 2),
            ("r1", "a", 1),
        ]
        assert loaded[0][0].version == 2
        assert len(await tx.outbox.events("r1")) == 2
        assert await tx.idempotency.get("run.create", "k1") == idem("k1")
    assert [line.message for line in await logs_of(pg_backend, "r1")] == ["hello"]


async def test_a_cancelled_transaction_rolls_back_and_frees_its_connection(
    sql_backend: Adapters,
) -> None:
    assert sql_backend.sql is not None
    async with sql_backend.persistence.transaction() as tx:
        await insert(tx, run("r1"))
    inside = asyncio.Event()

    async def hold() -> None:
        async with sql_backend.persistence.transaction() as tx:
            [(r1, _)] = await tx.runs.load(["r1"])  # a row lock (SQLite: the write lock)
            await tx.apply(Changeset(runs=(update(r1, replace(r1, event_seq=9)),)))
            await tx.runs.load(["r1"])  # the update goes out with this read
            inside.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(hold())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(5):  # the lock is gone and the write with it
        async with sql_backend.persistence.transaction() as tx:
            [(again, _)] = await tx.runs.load(["r1"])
    assert (again.event_seq, again.version) == (0, 1)
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
