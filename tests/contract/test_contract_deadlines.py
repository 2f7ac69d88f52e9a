"""Run deadlines, on memory, SQLite and PostgreSQL: `RunCreate(deadline=...)` and a workflow's
`timeout`. A run still unfinished at its deadline ends FAILED with `DeadlineExceededError`;
its running code sees cancellation, its queued jobs are dropped, its sleeps end. Maintenance
on any worker enforces it, at the moment (a wake-up hint), not at its next pass.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest

from stagewise import (
    InvalidCommandError,
    JobExecute,
    LeaseReapStale,
    RunClaimPending,
    RunCreate,
    RunRerunFrom,
    RunStatus,
    StageContext,
    StageStatus,
    WorkflowBuilder,
    WorkflowDefinitionError,
    define_sleep_stage,
    define_stage,
)
from stagewise.testing import SequentialIds
from tests.conftest import Adapters
from tests.contract.test_kernel_scenarios import make_env, queued_jobs

HOUR = timedelta(hours=1)


def napper(timeout: Any = None) -> Any:
    return (
        WorkflowBuilder("napper", timeout=timeout)
        .pipe(define_stage(id="first", execute=lambda ctx: ctx.run_input))
        .pipe(define_sleep_stage(id="nap", duration=3 * HOUR))
        .pipe(define_stage(id="last", execute=lambda ctx: ctx.input))
        .build()
    )


async def test_a_sleeping_run_fails_at_its_deadline_to_the_second(backend: Adapters) -> None:
    env = make_env(backend, [napper()])
    deadline = env.clock.now() + HOUR
    created = await env.kernel.dispatch(RunCreate(workflow_id="napper", deadline=deadline))
    await env.run_until_idle()  # the driver jumps to the deadline's hint, not the wake time
    run = await env.get_run(created.run_id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.type == "DeadlineExceededError"
    assert "still unfinished at its deadline" in run.error.message
    assert run.finished_at == deadline
    stages = await env.stages(created.run_id)
    assert stages["nap"].status is StageStatus.CANCELLED  # the sleep ended
    assert "last" not in stages
    assert env.sink.types(created.run_id)[-2:] == ["stage.cancelled", "run.failed"]


async def test_the_workflow_timeout_and_the_given_deadline_the_earlier_wins(
    backend: Adapters,
) -> None:
    env = make_env(backend, [napper(timeout=2 * HOUR)])
    start = env.clock.now()
    by_timeout = await env.kernel.dispatch(RunCreate(workflow_id="napper"))
    given = await env.kernel.dispatch(RunCreate(workflow_id="napper", deadline=start + HOUR))
    later = start + 5 * HOUR
    beyond = await env.kernel.dispatch(RunCreate(workflow_id="napper", deadline=later))
    assert (await env.get_run(by_timeout.run_id)).deadline == start + 2 * HOUR
    assert (await env.get_run(given.run_id)).deadline == start + HOUR
    assert (await env.get_run(beyond.run_id)).deadline == start + 2 * HOUR
    await env.run_until_idle()
    for run_id in (by_timeout.run_id, given.run_id, beyond.run_id):
        assert (await env.get_run(run_id)).status is RunStatus.FAILED


async def test_a_run_that_finishes_in_time_keeps_its_outcome(backend: Adapters) -> None:
    env = make_env(backend, [napper(timeout=4 * HOUR)])
    run = await env.run("napper", {"n": 1})
    assert (run.status, run.output) == (RunStatus.COMPLETED, {"n": 1})
    env.clock.advance(5 * HOUR.total_seconds())
    reaped = await env.kernel.dispatch(LeaseReapStale())
    assert reaped.timed_out == 0
    assert (await env.get_run(run.run_id)).status is RunStatus.COMPLETED


async def test_a_pending_run_past_its_deadline_fails_without_starting(backend: Adapters) -> None:
    env = make_env(backend, [napper()])
    created = await env.kernel.dispatch(
        RunCreate(workflow_id="napper", deadline=env.clock.now() + timedelta(seconds=30))
    )
    env.clock.advance(31)
    reaped = await env.kernel.dispatch(LeaseReapStale())
    assert reaped.timed_out == 1
    run = await env.get_run(created.run_id)
    assert (run.status, run.started_at) == (RunStatus.FAILED, None)
    assert (await env.kernel.dispatch(RunClaimPending())).run_ids == []


async def test_running_code_is_told_to_stop_and_queued_jobs_are_dropped(
    backend: Adapters,
) -> None:
    saw: list[bool] = []
    started = asyncio.Event()

    async def waits(ctx: StageContext) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            saw.append(True)
            raise
        return "never"

    wf = (
        WorkflowBuilder("busy")
        .parallel(
            [
                define_stage(id="long", execute=waits),
                define_stage(id="queued", execute=lambda ctx: 1),
            ]
        )
        .build()
    )
    env = make_env(backend, [wf])
    created = await env.kernel.dispatch(
        RunCreate(workflow_id="busy", deadline=env.clock.now() + timedelta(minutes=5))
    )
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
    assert job.stage_id == "long"
    running = asyncio.ensure_future(env.kernel.dispatch(JobExecute(job=job, worker_id="w")))
    await started.wait()
    env.clock.advance(300)
    assert (await env.kernel.dispatch(LeaseReapStale())).timed_out == 1
    result = await asyncio.wait_for(running, 10)
    assert result.outcome == "cancelled" and saw == [True]
    assert await queued_jobs(env) == 0
    stages = await env.stages(created.run_id)
    assert {s.status for s in stages.values()} == {StageStatus.CANCELLED}


async def test_any_worker_enforces_a_deadline_it_never_saw_set(backend: Adapters) -> None:
    # The creating process's hint is gone with it; a new one's reaper learns the next
    # deadline from the database (next_deadline) and is woken for it.
    env = make_env(backend, [napper()])
    created = await env.kernel.dispatch(
        RunCreate(workflow_id="napper", deadline=env.clock.now() + HOUR)
    )
    await env.kernel.aclose()
    later = make_env(backend, [napper()], ids=SequentialIds("second"))
    await later.run_until_idle()
    run = await later.get_run(created.run_id)
    assert run.status is RunStatus.FAILED and run.finished_at == run.deadline


async def test_a_rerun_gets_the_workflow_timeout_afresh(backend: Adapters) -> None:
    env = make_env(backend, [napper(timeout=HOUR)])
    run_id = await env.create_run("napper", {"n": 2})
    await env.run_until_idle()
    assert (await env.get_run(run_id)).status is RunStatus.FAILED
    await env.kernel.dispatch(RunRerunFrom(run_id=run_id, stage_id="nap"))
    rerun = await env.get_run(run_id)
    assert rerun.deadline == env.clock.now() + HOUR
    await env.run_until_idle()
    assert (await env.get_run(run_id)).status is RunStatus.FAILED  # a 3 h nap, 1 h allowed


async def test_a_deadline_must_be_aware_and_a_timeout_positive(backend: Adapters) -> None:
    env = make_env(backend, [napper()])
    naive = {"type": "run.create", "workflow_id": "napper", "deadline": datetime(2030, 1, 1)}
    with pytest.raises(InvalidCommandError, match="timezone"):
        await env.kernel.dispatch(naive)
    async with env.persistence.transaction() as tx:
        assert await tx.runs.find() == []  # nothing written
    with pytest.raises(WorkflowDefinitionError, match="must be positive"):
        WorkflowBuilder("w", timeout=0)
