"""run.create with a worker id: the creating transaction also claims the run and starts its
first stage for that worker (eager dispatch at creation), durably: the stage row fences it,
and a worker that never runs it loses it to the reaper like any other lease."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from stagewise import (
    JobExecute,
    JobHeartbeat,
    JobMessage,
    KernelSettings,
    LeaseLost,
    LeaseReapStale,
    RunCreate,
    RunStatus,
    StageStatus,
    Workflow,
    WorkflowBuilder,
    define_stage,
)
from stagewise.testing import InMemoryPersistence, TestEnvironment
from tests.contract.factories import execute_chain
from tests.unit.workflows import Num, add_branches, double, four_groups, inc


def wide_first() -> Workflow:
    """n -> [left(+1), right(*2)] -> join(left+right): a parallel first group."""
    return (
        WorkflowBuilder("wide", input=Num, output=Num)
        .parallel(
            [
                define_stage(id="left", input=Num, output=Num, execute=inc),
                define_stage(id="right", input=Num, output=Num, execute=double),
            ]
        )
        .pipe(define_stage(id="join", output=Num, execute=add_branches))
        .build()
    )


def committed(env: TestEnvironment) -> int:
    """Transactions the in-memory persistence has committed so far."""
    assert isinstance(env.persistence, InMemoryPersistence)
    return env.persistence.transactions


async def queued(env: TestEnvironment) -> list[JobMessage]:
    return await env.queue.dequeue(worker_id="probe", limit=100, lease_for=30)


async def test_a_run_created_for_a_worker_starts_its_first_stage_in_the_same_transaction() -> None:
    env = TestEnvironment([four_groups()])
    created = await env.kernel.dispatch(
        RunCreate(workflow_id="four", input={"n": 1}, worker_id="w")
    )

    assert created.created
    assert created.status is RunStatus.RUNNING
    assert committed(env) == 1
    (job,) = created.started_jobs
    assert (job.run_id, job.stage_id, job.attempt) == (created.run_id, "start", 1)
    stage = (await env.stages(created.run_id))["start"]
    assert (stage.status, stage.worker_id, stage.job_id) == (StageStatus.RUNNING, "w", job.job_id)
    lease = env.clock.now() + timedelta(seconds=env.kernel.settings.lease_seconds)
    assert stage.lease_expires_at == lease
    assert await queued(env) == []  # it never went through the transport
    assert ("run.claimPending", env.clock.now()) not in env.scheduler.hints
    assert ("lease.reapStale", lease) in env.scheduler.hints
    run = await env.get_run(created.run_id)
    assert run.status is RunStatus.RUNNING
    assert run.started_at == env.clock.now()

    # The first stage needs no start transaction: the creation handed it over.
    before = committed(env)
    result = await env.kernel.dispatch(JobExecute(job=job, worker_id="w", chain=True))
    assert result.outcome == "completed"
    assert committed(env) == before + 1

    assert result.next_job is not None
    left_or_right = await execute_chain(env, result.next_job)
    (other,) = await env.queue.dequeue(worker_id="w", limit=5, lease_for=30)
    await execute_chain(env, other)
    await env.run_until_idle()
    final = await env.get_run(created.run_id)
    assert (final.status, final.output) == (RunStatus.COMPLETED, {"n": 8})
    assert {left_or_right[0], other.stage_id} == {"left", "right"}
    assert env.sink.types(created.run_id)[:3] == ["run.created", "run.started", "stage.started"]


async def test_a_parallel_first_group_starts_one_stage_and_enqueues_the_others() -> None:
    env = TestEnvironment([wide_first()])
    created = await env.kernel.dispatch(
        RunCreate(workflow_id="wide", input={"n": 1}, worker_id="w")
    )

    (started,) = created.started_jobs
    (waiting,) = await env.queue.dequeue(worker_id="w", limit=5, lease_for=30)
    assert {started.stage_id, waiting.stage_id} == {"left", "right"}
    stages = await env.stages(created.run_id)
    assert stages[started.stage_id].status is StageStatus.RUNNING
    assert stages[waiting.stage_id].status is StageStatus.PENDING
    assert ("job.execute", env.clock.now()) in env.scheduler.hints  # for the enqueued one

    await execute_chain(env, started)
    await execute_chain(env, waiting)
    await env.run_until_idle()
    final = await env.get_run(created.run_id)
    assert (final.status, final.output) == (RunStatus.COMPLETED, {"n": 4})


async def test_an_idempotent_replay_starts_nothing() -> None:
    env = TestEnvironment([four_groups()])
    cmd = RunCreate(workflow_id="four", input={"n": 1}, idempotency_key="k", worker_id="w")
    first = await env.kernel.dispatch(cmd)
    again = await env.kernel.dispatch(cmd)
    other_worker = await env.kernel.dispatch(cmd.model_copy(update={"worker_id": "w2"}))

    assert len(first.started_jobs) == 1
    for replay in (again, other_worker):
        assert (replay.run_id, replay.created, replay.started_jobs) == (first.run_id, False, [])
        assert replay.status is RunStatus.RUNNING
    assert await queued(env) == []
    await env.kernel.dispatch(JobExecute(job=first.started_jobs[0], worker_id="w"))
    await env.run_until_idle()
    assert (await env.get_run(first.run_id)).status is RunStatus.COMPLETED
    assert env.sink.types(first.run_id).count("stage.started") == 5
    assert env.sink.types(first.run_id).count("run.started") == 1


async def test_a_stage_started_at_creation_whose_worker_never_runs_it_is_reaped() -> None:
    env = TestEnvironment([four_groups()], settings=KernelSettings(lease_seconds=30))
    created = await env.kernel.dispatch(
        RunCreate(workflow_id="four", input={"n": 1}, worker_id="w")
    )
    assert len(created.started_jobs) == 1  # ... and the worker dies before running it

    env.clock.advance(31)
    reaped = await env.kernel.dispatch(LeaseReapStale())
    assert reaped.retried == 1
    start = (await env.stages(created.run_id))["start"]
    assert (start.status, start.attempt) == (StageStatus.RETRYING, 2)

    await env.run_until_idle()
    final = await env.get_run(created.run_id)
    assert (final.status, final.output) == (RunStatus.COMPLETED, {"n": 8})


async def test_concurrent_creations_each_start_their_own_first_stage() -> None:
    env = TestEnvironment([four_groups()])
    created = await asyncio.gather(
        *(
            env.kernel.dispatch(RunCreate(workflow_id="four", input={"n": n}, worker_id="w"))
            for n in range(5)
        )
    )
    jobs = [job for result in created for job in result.started_jobs]
    assert [job.run_id for job in jobs] == [result.run_id for result in created]
    assert committed(env) < 5  # they shared transactions (group commit)

    before = committed(env)
    await asyncio.gather(*(env.kernel.dispatch(JobExecute(job=job, worker_id="w")) for job in jobs))
    # each start was handed over: no start transactions, the finishes grouped
    assert committed(env) - before <= 5
    await env.run_until_idle()
    for n, result in enumerate(created):
        final = await env.get_run(result.run_id)
        assert (final.status, final.output) == (RunStatus.COMPLETED, {"n": 3 * n + 5})


async def test_a_handed_over_stage_is_only_taken_by_the_worker_it_was_started_for() -> None:
    env = TestEnvironment([four_groups()])
    created = await env.kernel.dispatch(
        RunCreate(workflow_id="four", input={"n": 1}, worker_id="w")
    )
    with pytest.raises(LeaseLost):
        await env.kernel.dispatch(JobExecute(job=created.started_jobs[0], worker_id="other"))


async def test_a_heartbeat_writes_the_run_row_with_the_stage() -> None:
    # The rule RunStore.load lets adapters rely on: a transaction that writes a
    # run's stages writes its row too (PostgreSQL detects stale stages by the row alone).
    env = TestEnvironment([four_groups()])
    created = await env.kernel.dispatch(
        RunCreate(workflow_id="four", input={"n": 1}, worker_id="w")
    )
    before = await env.get_run(created.run_id)
    env.clock.advance(5)

    await env.kernel.dispatch(JobHeartbeat(job=created.started_jobs[0], worker_id="w"))

    after = await env.get_run(created.run_id)
    assert after.updated_at == env.clock.now() > before.updated_at
    assert after.event_seq == before.event_seq  # no event: only the row was touched
