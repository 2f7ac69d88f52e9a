"""The JobTransport port (in the same database as the persistence) and the BlobStore port,
on every backend."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stagewise._errors import BlobNotFoundError
from stagewise._records import JobMessage
from stagewise.testing import InMemoryPersistence
from tests.conftest import Adapters
from tests.contract.factories import assert_aware, at, job


async def dequeue(backend: Adapters, limit: int = 100, worker: str = "w1") -> list[str]:
    got = await backend.job_transport.dequeue(worker_id=worker, limit=limit, lease_for=30)
    return [j.job_id for j in got]


# --- enqueue and dequeue -----------------------------------------------------------------


async def test_dequeue_takes_available_jobs_by_priority_then_availability_then_order(
    backend: Adapters,
) -> None:
    backend.clock.advance(100)
    await backend.job_transport.enqueue(
        [
            job("late-low", available=50),
            job("early-low", available=10),
            job("high", priority=5, available=90),
            job("future", priority=9, available=101),
            job("same-time-1", available=10),
        ]
    )
    await backend.job_transport.enqueue([job("same-time-2", available=10)])

    first = await backend.job_transport.dequeue(worker_id="w1", limit=2, lease_for=30)
    rest = await dequeue(backend)

    assert [j.job_id for j in first] == ["high", "early-low"]
    assert rest == ["same-time-1", "same-time-2", "late-low"]
    assert first[0] == replace(job("high", priority=5, available=90), lease_expires_at=at(130))
    assert_aware(first[0].available_at, first[0].lease_expires_at)
    assert await dequeue(backend) == []

    backend.clock.advance(1)
    assert await dequeue(backend) == ["future"]


async def test_a_dequeued_job_is_invisible_until_its_lease_expires(backend: Adapters) -> None:
    await backend.job_transport.enqueue([job("j1"), job("j2")])
    assert await dequeue(backend, limit=1) == ["j1"]
    assert await dequeue(backend, worker="w2") == ["j2"]

    backend.clock.advance(29.999)
    assert await dequeue(backend, worker="w2") == []
    backend.clock.advance(0.001)
    # Both leases lapsed: the jobs are deliverable again, no release needed.
    again = await backend.job_transport.dequeue(worker_id="w3", limit=10, lease_for=5)
    assert [j.job_id for j in again] == ["j1", "j2"]
    assert again[0].lease_expires_at == at(35)


async def test_ack_removes_jobs_and_ignores_unknown_ones(backend: Adapters) -> None:
    await backend.job_transport.enqueue([job("j1"), job("j2"), job("j3")])
    await dequeue(backend, limit=1)

    await backend.job_transport.ack(["j1", "j2", "nope"])
    await backend.job_transport.ack([])
    await backend.job_transport.ack(["j1"])

    assert await dequeue(backend) == ["j3"]
    backend.clock.advance(60)
    assert await dequeue(backend) == ["j3"]


async def test_retry_at_gives_a_job_back_from_a_later_time(backend: Adapters) -> None:
    await backend.job_transport.enqueue([job("j1"), job("j2")])
    await dequeue(backend)

    await backend.job_transport.retry_at("j1", at(10))
    await backend.job_transport.retry_at("nope", at(10))

    assert await dequeue(backend) == []
    backend.clock.advance(10)
    got = await backend.job_transport.dequeue(worker_id="w2", limit=10, lease_for=30)
    assert [(j.job_id, j.available_at) for j in got] == [("j1", at(10))]


async def test_extend_lease_pushes_the_lease_out(backend: Adapters) -> None:
    await backend.job_transport.enqueue([job("j1")])
    await dequeue(backend)
    backend.clock.advance(20)

    assert await backend.job_transport.extend_lease("j1", lease_for=30) is True
    assert await backend.job_transport.extend_lease("nope", lease_for=30) is False

    backend.clock.advance(20)  # past the first lease (30), within the new one (50)
    assert await dequeue(backend, worker="w2") == []
    backend.clock.advance(10)
    assert await dequeue(backend, worker="w2") == ["j1"]
    await backend.job_transport.ack(["j1"])
    assert await backend.job_transport.extend_lease("j1", lease_for=30) is False


async def test_release_expired_frees_lapsed_leases_or_a_workers_leases(backend: Adapters) -> None:
    await backend.job_transport.enqueue([job("a"), job("b"), job("c"), job("free")])
    await backend.job_transport.dequeue(worker_id="w1", limit=1, lease_for=10)  # a
    await backend.job_transport.dequeue(worker_id="w1", limit=1, lease_for=100)  # b
    await backend.job_transport.dequeue(worker_id="w2", limit=1, lease_for=100)  # c
    backend.clock.advance(10)

    assert await backend.job_transport.release_expired() == 1  # a
    assert await backend.job_transport.release_expired(worker_id="w1") == 1  # b
    assert await backend.job_transport.release_expired() == 0

    assert await dequeue(backend, worker="w3") == ["a", "b", "free"]
    backend.clock.advance(30)
    assert await backend.job_transport.release_expired(worker_id="w2") == 4  # c, and w3's


async def test_discard_run_drops_every_queued_job_of_the_run(backend: Adapters) -> None:
    await backend.job_transport.enqueue(
        [job("a1", "ra"), job("a2", "ra", available=99), job("b1", "rb")]
    )
    await dequeue(backend, limit=1)  # a1, leased

    assert await backend.job_transport.discard_run("ra") == 2
    assert await backend.job_transport.discard_run("ra") == 0

    backend.clock.advance(100)
    assert await dequeue(backend) == ["b1"]


async def test_enqueueing_a_queued_job_again_replaces_it(backend: Adapters) -> None:
    await backend.job_transport.enqueue([job("j1", attempt=1), job("j2")])
    await dequeue(backend)

    await backend.job_transport.enqueue([job("j3"), job("j1", attempt=2), job("j3", attempt=3)])
    await backend.job_transport.enqueue([job("j2", attempt=2), job("j4")])

    got = await backend.job_transport.dequeue(worker_id="w2", limit=10, lease_for=30)
    # Replaced jobs go to the back of the queue in call order; within one call a repeated
    # id counts once, in its last place.
    assert [(j.job_id, j.attempt) for j in got] == [("j1", 2), ("j3", 3), ("j2", 2), ("j4", 1)]


# --- in the kernel's transaction ---------------------------------------------------------


async def test_the_transport_joins_transactions_of_its_own_database(backend: Adapters) -> None:
    async with backend.persistence.transaction() as tx:
        assert backend.job_transport.joins(tx) is True
    async with InMemoryPersistence().transaction() as foreign:
        assert backend.job_transport.joins(foreign) is False


async def test_jobs_enqueued_in_a_rolled_back_transaction_never_exist(backend: Adapters) -> None:
    async def doomed() -> None:
        async with backend.persistence.transaction() as tx:
            await backend.job_transport.enqueue([job("ghost")], tx=tx)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await doomed()
    assert await dequeue(backend) == []

    async with backend.persistence.transaction() as tx:
        await backend.job_transport.enqueue([job("real")], tx=tx)
    assert await dequeue(backend) == ["real"]


async def test_ack_and_discard_in_a_rolled_back_transaction_change_nothing(
    backend: Adapters,
) -> None:
    await backend.job_transport.enqueue([job("a", "ra"), job("b", "rb")])

    async def doomed() -> None:
        async with backend.persistence.transaction() as tx:
            await backend.job_transport.ack(["a"], tx=tx)
            assert await backend.job_transport.discard_run("rb", tx=tx) == 1
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await doomed()
    assert await dequeue(backend, limit=10) == ["a", "b"]

    async with backend.persistence.transaction() as tx:
        await backend.job_transport.ack(["a"], tx=tx)
        assert await backend.job_transport.discard_run("rb", tx=tx) == 1
    backend.clock.advance(60)
    assert await dequeue(backend) == []


async def test_an_empty_enqueue_or_a_zero_limit_does_nothing(backend: Adapters) -> None:
    await backend.job_transport.enqueue([])
    await backend.job_transport.enqueue([job("j1")])
    assert await backend.job_transport.dequeue(worker_id="w", limit=0, lease_for=30) == []
    assert await dequeue(backend) == ["j1"]


# --- blobs -------------------------------------------------------------------------------


async def test_blobs_put_get_has_delete_and_list(backend: Adapters) -> None:
    blobs = backend.blob_store
    await blobs.put("runs/r1/b", b"\x00\xffbinary")
    await blobs.put("runs/r1/a", b"first")
    await blobs.put("runs/r1/a", b"second")
    await blobs.put("runs/r10/x", b"")
    await blobs.put("runs/r2/a", b"2")
    await blobs.put("Runs/upper", b"u")

    assert await blobs.get("runs/r1/a") == b"second"
    assert await blobs.get("runs/r1/b") == b"\x00\xffbinary"
    assert await blobs.get("runs/r10/x") == b""
    assert await blobs.has("runs/r1/a") is True
    assert await blobs.has("runs/r1") is False
    assert await blobs.list("runs/r1/") == ["runs/r1/a", "runs/r1/b"]
    assert await blobs.list("runs/r1") == ["runs/r1/a", "runs/r1/b", "runs/r10/x"]
    assert await blobs.list("runs/") == ["runs/r1/a", "runs/r1/b", "runs/r10/x", "runs/r2/a"]
    assert await blobs.list("") == [
        "Runs/upper",
        "runs/r1/a",
        "runs/r1/b",
        "runs/r10/x",
        "runs/r2/a",
    ]
    assert await blobs.list("nothing/") == []

    await blobs.delete("runs/r1/a")
    await blobs.delete("runs/r1/a")
    assert await blobs.has("runs/r1/a") is False
    with pytest.raises(BlobNotFoundError) as raised:
        await blobs.get("runs/r1/a")
    assert raised.value.key == "runs/r1/a"


async def test_dequeue_takes_only_jobs_of_the_workflow_versions_asked_for(
    backend: Adapters,
) -> None:
    def versioned(job_id: str, workflow: str, version: str | None) -> JobMessage:
        return replace(job(job_id), workflow_id=workflow, workflow_version=version)

    await backend.job_transport.enqueue(
        [
            versioned("v1", "wf", "v1"),
            versioned("v2", "wf", "v2"),
            versioned("old", "wf", None),  # made before versions were: goes with its id
            versioned("other", "other", "v1"),
        ]
    )
    transport = backend.job_transport

    mine = await transport.dequeue(worker_id="w", limit=10, lease_for=30, workflows=[("wf", "v2")])
    none = await transport.dequeue(worker_id="w", limit=10, lease_for=30, workflows=[])
    rest = await transport.dequeue(worker_id="w", limit=10, lease_for=30)

    assert sorted(j.job_id for j in mine) == ["old", "v2"]
    assert [j.workflow_version for j in mine if j.job_id == "v2"] == ["v2"]
    assert none == []
    assert sorted(j.job_id for j in rest) == ["other", "v1"]
