"""Concurrent claimers on real, separate database connections never take the same thing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from stagewise._errors import ConcurrentUpdateError, DuplicateRecordError
from stagewise._records import Changeset, RunRecord, RunWrite
from stagewise._states import RunStatus
from stagewise_sql import SqlBackend
from tests.conftest import Adapters, extra_backends
from tests.contract.factories import at, delivery, events_of, idem, insert, job, run


def update(before: RunRecord, after: RunRecord) -> RunWrite:
    """`after` written over `before`, at the next version."""
    return RunWrite(replace(after, version=before.version + 1), expected_version=before.version)


@pytest.fixture
async def others(sql_backend: Adapters) -> AsyncIterator[list[SqlBackend]]:
    """Eight more backends on the same database: eight engines, eight connections."""
    async with extra_backends(sql_backend, 8) as backends:
        yield backends


async def test_eight_dequeuers_never_take_a_job_twice_nor_lose_one(
    sql_backend: Adapters, others: list[SqlBackend]
) -> None:
    ids = [f"j{i:03d}" for i in range(500)]
    await sql_backend.job_transport.enqueue(
        [job(j, priority=i % 3, available=-(i % 7)) for i, j in enumerate(ids)]
    )
    taken: list[str] = []

    async def worker(n: int, b: SqlBackend) -> None:
        while batch := await b.job_transport.dequeue(worker_id=f"w{n}", limit=7, lease_for=60):
            taken.extend(j.job_id for j in batch)
            if n % 2:
                await b.job_transport.ack([j.job_id for j in batch])

    await asyncio.gather(*(worker(n, b) for n, b in enumerate(others)))

    duplicates = [j for j, count in Counter(taken).items() if count > 1]
    assert duplicates == []
    assert sorted(taken) == ids


async def test_eight_run_claimers_never_get_the_same_run(
    sql_backend: Adapters, others: list[SqlBackend]
) -> None:
    async with sql_backend.persistence.transaction() as tx:
        await insert(tx, *(run(f"r{i:03d}", priority=i % 4, created=i) for i in range(120)))
    claimed: list[str] = []

    async def claimer(b: SqlBackend) -> None:
        while True:
            async with b.persistence.transaction() as tx:
                runs = await tx.runs.claim_pending(4)
                await asyncio.sleep(0.005)  # hold the row locks while the others claim
                # each update expects the version the run was claimed at
                started = (update(r, replace(r, status=RunStatus.RUNNING)) for r in runs)
                await tx.apply(Changeset(runs=tuple(started)))
            if not runs:
                return
            claimed.extend(r.run_id for r in runs)

    await asyncio.gather(*(claimer(b) for b in others))

    assert [r for r, count in Counter(claimed).items() if count > 1] == []
    assert sorted(claimed) == [f"r{i:03d}" for i in range(120)]


async def test_two_outbox_claimers_never_claim_the_same_group(
    sql_backend: Adapters, others: list[SqlBackend]
) -> None:
    evs = [e for r in range(30) for e in events_of(f"r{r:02d}", [1, 2, 3])]
    async with sql_backend.persistence.transaction() as tx:
        await tx.apply(
            Changeset(
                new_runs=tuple(run(f"r{r:02d}", status=RunStatus.RUNNING) for r in range(30)),
                events=tuple(evs),
                deliveries=tuple(delivery(e, c) for e in evs for c in ("a", "b")),
            )
        )
    held: dict[tuple[str, str], str] = {}
    delivered: list[tuple[str, str, int]] = []

    async def flusher(name: str, b: SqlBackend) -> None:
        while True:
            async with b.persistence.transaction() as tx:
                batch = await tx.outbox.claim(now=at(0), limit=5, claimer=name, claim_until=at(30))
            if not batch:
                return
            for c in batch:  # a group is held by one claimer until it lets go of it
                group = (c.delivery.consumer, c.delivery.run_id)
                assert held.setdefault(group, name) == name, f"{group} claimed twice"
            await asyncio.sleep(0.002)
            delivered.extend(
                (c.delivery.consumer, c.delivery.run_id, c.delivery.seq) for c in batch
            )
            async with b.persistence.transaction() as tx:
                await tx.outbox.update(
                    [replace(c.delivery, status="delivered", claimed_until=None) for c in batch]
                )
            for c in batch:
                held.pop((c.delivery.consumer, c.delivery.run_id), None)

    await asyncio.gather(flusher("f1", others[0]), flusher("f2", others[1]))

    assert len(delivered) == len(set(delivered)) == 30 * 3 * 2
    for consumer in ("a", "b"):
        for r in range(30):
            seqs = [s for c, run_id, s in delivered if (c, run_id) == (consumer, f"r{r:02d}")]
            assert seqs == [1, 2, 3]


async def test_of_writers_that_read_the_same_version_only_one_wins(
    sql_backend: Adapters, others: list[SqlBackend]
) -> None:
    async with sql_backend.persistence.transaction() as tx:
        await insert(tx, run("r1"))
    all_read = asyncio.Barrier(len(others))
    outcomes: list[str] = []

    async def writer(n: int, b: SqlBackend) -> None:
        async with b.persistence.transaction() as tx:
            seen = await tx.runs.get("r1")
        assert seen is not None
        await all_read.wait()  # then all write at once, each on the version it read
        try:
            async with b.persistence.transaction() as tx:
                await tx.apply(Changeset(runs=(update(seen, replace(seen, priority=n)),)))
        except ConcurrentUpdateError:
            outcomes.append("refused")
        else:
            outcomes.append(f"wrote {n}")

    async with asyncio.timeout(30):
        await asyncio.gather(*(writer(n, b) for n, b in enumerate(others)))

    [won] = [o for o in outcomes if o.startswith("wrote")]
    assert outcomes.count("refused") == len(others) - 1
    async with sql_backend.persistence.transaction() as tx:
        final = await tx.runs.get("r1")
    assert final is not None
    assert (f"wrote {final.priority}", final.version) == (won, 2)


@pytest.mark.postgres
async def test_a_locked_run_is_skipped_or_waited_for(pg_backend: Adapters) -> None:
    async with pg_backend.persistence.transaction() as tx:
        await insert(tx, run("r1"))
    other = await SqlBackend.connect(pg_backend.url or "", clock=pg_backend.clock)
    locked, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with pg_backend.persistence.transaction() as tx:
            [(r1, _)] = await tx.runs.load(["r1"])
            locked.set()
            await release.wait()
            await tx.apply(Changeset(runs=(update(r1, replace(r1, priority=9)),)))

    task = asyncio.create_task(holder())
    try:
        await locked.wait()
        async with other.persistence.transaction() as tx:
            assert await tx.runs.load(["r1"], skip_locked=True) == []
            assert await tx.runs.claim_pending(10) == []

        async def wait_for_it() -> int:
            async with other.persistence.transaction() as tx:
                got = await tx.runs.load(["r1"])
                return -1 if not got else got[0][0].priority

        waiter = asyncio.create_task(wait_for_it())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        release.set()
        assert await waiter == 9  # it waited, then read the committed row
    finally:
        release.set()
        await task
        await other.close()


@pytest.mark.postgres
async def test_a_concurrent_insert_of_the_same_idempotency_key_waits_then_conflicts(
    pg_backend: Adapters,
) -> None:
    other = await SqlBackend.connect(pg_backend.url or "", clock=pg_backend.clock)
    inserted, release = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with pg_backend.persistence.transaction() as tx:
            await tx.apply(Changeset(idempotency=(idem("k"),)))
            assert await tx.idempotency.get("run.create", "k") == idem("k")  # it went out
            inserted.set()
            await release.wait()

    task = asyncio.create_task(first())
    try:
        await inserted.wait()

        async def second() -> None:
            async with other.persistence.transaction() as tx:
                await tx.apply(Changeset(idempotency=(idem("k"),)))

        racer = asyncio.create_task(second())
        await asyncio.sleep(0.05)
        assert not racer.done()
        release.set()
        with pytest.raises(DuplicateRecordError):
            await racer
    finally:
        release.set()
        await task
        await other.close()
