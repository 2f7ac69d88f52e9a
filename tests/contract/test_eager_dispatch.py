"""Eager dispatch (`JobExecute(chain=True)`) on every backend: the transaction that records a
stage may start the run's next stage for the same worker and hand it back as `next_job`,
instead of enqueueing it. It stays durable: the handed-off stage is RUNNING under the
worker's lease, and a worker that dies before running it is reaped like any other."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from stagewise import (
    JobExecute,
    JobMessage,
    KernelSettings,
    LeaseLost,
    LeaseReapStale,
    RunClaimPending,
    RunCreate,
    RunStatus,
    StageStatus,
)
from tests.conftest import Adapters
from tests.contract.factories import execute_chain
from tests.contract.test_kernel_scenarios import make_env, queued_jobs
from tests.contract.test_round_trip_budget import three_stages
from tests.unit.workflows import four_groups


async def test_a_chained_worker_runs_a_sequential_run_from_one_delivery(
    backend: Adapters,
) -> None:
    env = make_env(backend, [three_stages()])
    run = await env.kernel.dispatch(RunCreate(workflow_id="three", input={"n": 0}))
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)

    ran = []
    next_job: JobMessage | None = job
    while next_job is not None:
        result = await env.kernel.dispatch(JobExecute(job=next_job, worker_id="w", chain=True))
        assert result.outcome == "completed"
        ran.append(result.stage_id)
        next_job = result.next_job
        if next_job is not None:
            # handed off: RUNNING under this worker, nothing left in the transport
            stage = (await env.stages(run.run_id))[next_job.stage_id]
            assert stage.status is StageStatus.RUNNING
            assert stage.worker_id == "w"
            assert stage.job_id == next_job.job_id
            assert await queued_jobs(env) == 0

    assert ran == ["a", "b", "c"]
    final = await env.get_run(run.run_id)
    assert final.status is RunStatus.COMPLETED
    assert final.output == {"n": 3}
    await env.run_until_idle()
    types = [e.type for e in env.sink.of_run(run.run_id)]
    assert types.count("stage.started") == 3
    assert types.count("stage.completed") == 3
    assert types[-1] == "run.completed"


async def test_without_chain_the_next_stage_is_enqueued(backend: Adapters) -> None:
    env = make_env(backend, [three_stages()])
    await env.kernel.dispatch(RunCreate(workflow_id="three", input={"n": 0}))
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
    result = await env.kernel.dispatch(JobExecute(job=job, worker_id="w"))
    assert result.next_job is None
    (queued,) = await env.queue.dequeue(worker_id="w", limit=5, lease_for=30)
    assert queued.stage_id == "b"


async def test_a_parallel_group_hands_off_one_stage_and_enqueues_the_rest(
    backend: Adapters,
) -> None:
    env = make_env(backend, [four_groups()])
    run = await env.kernel.dispatch(RunCreate(workflow_id="four", input={"n": 1}))
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
    result = await env.kernel.dispatch(JobExecute(job=job, worker_id="w", chain=True))
    assert result.next_job is not None
    queued = await env.queue.dequeue(worker_id="w", limit=5, lease_for=30)
    assert {result.next_job.stage_id, *(j.stage_id for j in queued)} == {"left", "right"}
    assert len(queued) == 1

    for j in [result.next_job, *queued]:
        await env.kernel.dispatch(JobExecute(job=j, worker_id="w"))
    await env.run_until_idle()
    finished = await env.get_run(run.run_id)
    assert finished.status is RunStatus.COMPLETED
    assert finished.output == {"n": 8}


async def test_a_handed_off_stage_whose_worker_died_is_reaped_and_retried(
    backend: Adapters,
) -> None:
    env = make_env(backend, [three_stages()], settings=KernelSettings(lease_seconds=30))
    run = await env.kernel.dispatch(RunCreate(workflow_id="three", input={"n": 0}))
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
    result = await env.kernel.dispatch(JobExecute(job=job, worker_id="w", chain=True))
    assert result.next_job is not None  # ... and the worker dies before running it

    env.clock.advance(timedelta(seconds=31))
    reaped = await env.kernel.dispatch(LeaseReapStale())
    assert reaped.retried == 1
    b = (await env.stages(run.run_id))["b"]
    assert b.status is StageStatus.RETRYING
    assert b.attempt == 2

    await env.run_until_idle()
    final = await env.get_run(run.run_id)
    assert final.status is RunStatus.COMPLETED
    assert final.output == {"n": 3}


async def test_a_hand_off_is_only_taken_by_the_worker_it_was_made_for(
    backend: Adapters,
) -> None:
    env = make_env(backend, [three_stages()])
    await env.kernel.dispatch(RunCreate(workflow_id="three", input={"n": 0}))
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
    result = await env.kernel.dispatch(JobExecute(job=job, worker_id="w", chain=True))
    assert result.next_job is not None
    with pytest.raises(LeaseLost):
        await env.kernel.dispatch(JobExecute(job=result.next_job, worker_id="other"))


# --- at claim time -----------------------------------------------------------------------


async def test_a_claim_with_take_starts_first_stages_for_the_worker(backend: Adapters) -> None:
    env = make_env(backend, [three_stages()])
    runs = [
        await env.kernel.dispatch(RunCreate(workflow_id="three", input={"n": n})) for n in range(3)
    ]
    claimed = await env.kernel.dispatch(RunClaimPending(limit=3, worker_id="w", take=2))

    assert len(claimed.run_ids) == 3
    assert len(claimed.started_jobs) == 2
    assert claimed.jobs_enqueued == 1  # the third run's first job went to the transport
    assert await queued_jobs(env) == 1
    for job in claimed.started_jobs:
        stage = (await env.stages(job.run_id))[job.stage_id]
        assert (stage.status, stage.worker_id, stage.job_id) == (
            StageStatus.RUNNING,
            "w",
            job.job_id,
        )

    for job in claimed.started_jobs:
        await execute_chain(env, job)
    await env.run_until_idle()
    for run, n in zip(runs, range(3), strict=True):
        final = await env.get_run(run.run_id)
        assert (final.status, final.output) == (RunStatus.COMPLETED, {"n": n + 3})
        types = [e.type for e in env.sink.of_run(run.run_id)]
        assert types[:3] == ["run.created", "run.started", "stage.started"]


async def test_a_stage_started_at_claim_whose_worker_died_is_reaped(backend: Adapters) -> None:
    env = make_env(backend, [three_stages()], settings=KernelSettings(lease_seconds=30))
    run = await env.kernel.dispatch(RunCreate(workflow_id="three", input={"n": 0}))
    claimed = await env.kernel.dispatch(RunClaimPending(worker_id="w", take=5))
    assert len(claimed.started_jobs) == 1  # ... and the worker dies before running it

    env.clock.advance(timedelta(seconds=31))
    assert (await env.kernel.dispatch(LeaseReapStale())).retried == 1
    await env.run_until_idle()
    final = await env.get_run(run.run_id)
    assert (final.status, final.output) == (RunStatus.COMPLETED, {"n": 3})


# --- at creation ---------------------------------------------------------------------------


async def test_a_run_created_for_a_worker_completes_from_its_started_stage(
    backend: Adapters,
) -> None:
    env = make_env(backend, [three_stages()])
    created = await env.kernel.dispatch(
        RunCreate(workflow_id="three", input={"n": 0}, worker_id="w", idempotency_key="k")
    )
    assert (created.status, created.created) == (RunStatus.RUNNING, True)
    (job,) = created.started_jobs
    stage = (await env.stages(created.run_id))["a"]
    assert (stage.status, stage.worker_id, stage.job_id) == (StageStatus.RUNNING, "w", job.job_id)
    assert await queued_jobs(env) == 0
    replay = await env.kernel.dispatch(
        RunCreate(workflow_id="three", input={"n": 0}, worker_id="w", idempotency_key="k")
    )
    assert (replay.run_id, replay.created, replay.started_jobs) == (created.run_id, False, [])

    waiter = asyncio.ensure_future(env.kernel.wait_for_run(created.run_id, poll_interval=3600))
    assert await execute_chain(env, job) == ["a", "b", "c"]
    final = await asyncio.wait_for(waiter, timeout=5)
    assert (final.status, final.output) == (RunStatus.COMPLETED, {"n": 3})
    assert final == await env.kernel.get_run(created.run_id)
    await env.run_until_idle()
    types = [e.type for e in env.sink.of_run(created.run_id)]
    assert types[:3] == ["run.created", "run.started", "stage.started"]
    assert types.count("stage.started") == 3
    assert types[-1] == "run.completed"


def test_take_without_a_worker_id_is_refused() -> None:
    with pytest.raises(ValueError, match="worker_id"):
        RunClaimPending(take=1)
