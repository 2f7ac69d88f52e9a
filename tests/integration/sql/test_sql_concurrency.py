"""Concurrent claimers on real, separate database connections never take the same thing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from stagewise._states import RunStatus
from stagewise_sql import SqlBackend
from tests.conftest import Adapters, extra_backends
from tests.contract.factories import at, delivery, events_of, idem, job, run


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
        for i in range(120):
            await tx.runs.insert(run(f"r{i:03d}", priority=i % 4, created=i))
    claimed: list[str] = []

    async def claimer(b: SqlBackend) -> None:
        while True:
            async with b.persistence.transaction() as tx:
                runs = await tx.runs.claim_pending(4)
                await asyncio.sleep(0.005)  # hold the row locks while the others claim
                for r in runs:
                    await tx.runs.save(replace(r, status=RunStatus.RUNNING))
            if not runs:
                return
            claimed.extend(r.run_id for r in runs)

    await asyncio.gather(*(claimer(b) for b in others))

    assert [r for r, count in Counter(claimed).items() if count > 1] == []
    assert sorted(claimed) == [f"r{i:03d}" for i in range(120)]


async def test_two_outbox_claimers_never_claim_the_same_group(
    sql_backend: Adapters, others: list[SqlBackend]
) -> None:
    async with sql_backend.persistence.transaction() as tx:
        for r in range(30):
            evs = events_of(f"r{r:02d}", [1, 2, 3])
            await tx.runs.insert(run(f"r{r:02d}", status=RunStatus.RUNNING))
            await tx.outbox.append(evs, [delivery(e, c) for e in evs for c in ("a", "b")])
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


@pytest.mark.postgres
async def test_a_locked_run_is_skipped_or_waited_for(pg_backend: Adapters) -> None:
    async with pg_backend.persistence.transaction() as tx:
        await tx.runs.insert(run("r1"))
    other = await SqlBackend.connect(pg_backend.url or "", clock=pg_backend.clock)
    locked, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with pg_backend.persistence.transaction() as tx:
            await tx.runs.lock("r1")
            locked.set()
            await release.wait()
            await tx.runs.save(replace(run("r1"), priority=9))

    task = asyncio.create_task(holder())
    try:
        await locked.wait()
        async with other.persistence.transaction() as tx:
            assert await tx.runs.lock("r1", skip_locked=True) is None
            assert await tx.runs.claim_pending(10) == []

        async def wait_for_it() -> int:
            async with other.persistence.transaction() as tx:
                got = await tx.runs.lock("r1")
                return -1 if got is None else got.priority

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
            assert await tx.idempotency.insert(idem("k"))
            inserted.set()
            await release.wait()

    task = asyncio.create_task(first())
    try:
        await inserted.wait()

        async def second() -> bool:
            async with other.persistence.transaction() as tx:
                return await tx.idempotency.insert(idem("k"))

        racer = asyncio.create_task(second())
        await asyncio.sleep(0.05)
        assert not racer.done()
        release.set()
        assert await racer is False
    finally:
        release.set()
        await task
        await other.close()
