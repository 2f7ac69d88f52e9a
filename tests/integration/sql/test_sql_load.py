"""`runs.load` on PostgreSQL: it locks in run_id order, so overlapping sets asked for in any
order never deadlock; the locks hold until commit; `skip_locked` leaves out what another
transaction holds; and stages written while a loader waited are read as committed."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from sqlalchemy import text

from stagewise._records import Changeset, RunRecord, RunWrite
from stagewise_sql import SqlBackend
from tests.conftest import Adapters, extra_backends
from tests.contract.factories import insert, run, stage

pytestmark = pytest.mark.postgres

RUN_IDS = [f"r{i}" for i in range(6)]


@pytest.fixture
async def lockers(pg_backend: Adapters) -> AsyncIterator[list[SqlBackend]]:
    """Four more backends on the same database, one connection each, and the runs to lock."""
    async with pg_backend.persistence.transaction() as tx:
        await insert(tx, *(run(run_id) for run_id in RUN_IDS))
    async with extra_backends(pg_backend, 4) as backends:
        yield backends


def update(before: RunRecord, after: RunRecord) -> RunWrite:
    """`after` written over `before`, at the next version."""
    return RunWrite(replace(after, version=before.version + 1), expected_version=before.version)


async def waiting_on_a_lock(backend: SqlBackend) -> int:
    """How many connections to this database wait for a lock right now."""
    async with backend.engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
        return int(result.scalar_one())


async def until_blocked_or(done: asyncio.Event, observer: SqlBackend) -> None:
    """Until some connection waits for a lock, or `done` is set (nobody had to wait)."""
    for _ in range(1000):
        if done.is_set() or await waiting_on_a_lock(observer):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the second locker neither waited nor got its locks")


async def test_overlapping_loads_in_any_order_never_deadlock_nor_lose_an_update(
    lockers: list[SqlBackend],
) -> None:
    locked: Counter[str] = Counter()
    orders: list[list[str]] = []

    async def locker(n: int, backend: SqlBackend) -> None:
        rng = random.Random(n)
        for _ in range(25):
            wanted = rng.sample(RUN_IDS, 4)  # overlapping sets, each in its own order
            async with backend.persistence.transaction() as tx:
                loaded = await tx.runs.load(wanted)
                await asyncio.sleep(0)  # let the others queue up on these rows
                writes = (update(r, replace(r, event_seq=r.event_seq + 1)) for r, _ in loaded)
                await tx.apply(Changeset(runs=tuple(writes)))
            orders.append([r.run_id for r, _ in loaded])
            locked.update(wanted)

    async with asyncio.timeout(60):
        await asyncio.gather(*(locker(n, b) for n, b in enumerate(lockers)))

    assert all(order == sorted(order) for order in orders)  # run_id order, asked any way
    async with lockers[0].persistence.transaction() as tx:
        runs = [r for r, _ in await tx.runs.load(RUN_IDS)]
    assert {r.run_id: r.event_seq for r in runs} == {r: locked[r] for r in RUN_IDS}
    assert {r.run_id: r.version for r in runs} == {r: 1 + locked[r] for r in RUN_IDS}


async def test_load_holds_its_locks_until_commit(lockers: list[SqlBackend]) -> None:
    first, second, observer = lockers[:3]
    committing = asyncio.Event()
    second_locked = asyncio.Event()
    committed_before_second_locked: list[bool] = []

    async def lock_after_first(run_ids: list[str]) -> None:
        async with second.persistence.transaction() as tx:
            await tx.runs.load(run_ids)
            committed_before_second_locked.append(committing.is_set())
            second_locked.set()

    async with first.persistence.transaction() as tx:
        await tx.runs.load(["r1", "r2", "r3"])
        waiter = asyncio.create_task(lock_after_first(["r4", "r3", "r0"]))
        await until_blocked_or(second_locked, observer)
        committing.set()
    async with asyncio.timeout(10):
        await waiter

    assert committed_before_second_locked == [True]


async def test_load_with_skip_locked_leaves_out_the_runs_another_transaction_holds(
    lockers: list[SqlBackend],
) -> None:
    first, second = lockers[:2]
    async with first.persistence.transaction() as tx:
        await tx.runs.load(["r1", "r3"])
        async with asyncio.timeout(5), second.persistence.transaction() as other:
            free = await other.runs.load(["r4", "r3", "r2", "r1"], skip_locked=True)

    assert [r.run_id for r, _ in free] == ["r2", "r4"]


async def _stage_seen_after_a_wait(lockers: list[SqlBackend], *, touch_run: bool) -> int:
    """The attempt of r1's stage `a` that a `load` sees when it waited for the lock while
    another transaction changed the stage (and the run row, at its next version, if
    `touch_run`)."""
    first, second, observer = lockers[:3]
    async with first.persistence.transaction() as tx:
        await tx.apply(Changeset(stages=(stage("r1", "a", attempt=1),)))
    seen: list[int] = []
    got_it = asyncio.Event()

    async def read_after_first() -> None:
        async with second.persistence.transaction() as tx:
            [(_, stages)] = await tx.runs.load(["r1"])
            seen.append(stages[0].attempt)
            got_it.set()

    async with first.persistence.transaction() as tx:
        [(r1, _)] = await tx.runs.load(["r1"])
        waiter = asyncio.create_task(read_after_first())
        await until_blocked_or(got_it, observer)
        touched = (update(r1, replace(r1, event_seq=r1.event_seq + 1)),) if touch_run else ()
        await tx.apply(Changeset(runs=touched, stages=(stage("r1", "a", attempt=2),)))
    async with asyncio.timeout(10):
        await waiter
    return seen[0]


async def test_load_reads_stages_written_while_it_waited(lockers: list[SqlBackend]) -> None:
    # The writer keeps the kernel's rule (the run row is written with its stages, at its
    # next version): the stages come back as committed, not as the waiting statement's
    # snapshot had them.
    assert await _stage_seen_after_a_wait(lockers, touch_run=True) == 2


async def test_load_relies_on_the_run_row_being_written_with_its_stages(
    lockers: list[SqlBackend],
) -> None:
    # What the rule is for: stages changed behind an unchanged run row go unnoticed by the
    # one-statement read. The kernel never writes stages that way.
    assert await _stage_seen_after_a_wait(lockers, touch_run=False) == 1
