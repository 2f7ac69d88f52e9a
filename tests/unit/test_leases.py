"""Heartbeats extend a lease and learn of cancellation; a worker can give an attempt back."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from stagewise import (
    JobExecute,
    JobHeartbeat,
    JobRelease,
    KernelSettings,
    LeaseLost,
    LeaseReapStale,
    RetryPolicy,
    RunClaimPending,
    RunStatus,
    StageContext,
    StageReleased,
    StageStatus,
    WorkflowBuilder,
    define_stage,
)
from stagewise.testing import InMemoryPersistence, TestEnvironment


def stalling_workflow(seen_cancel: list[int]) -> object:
    async def stall(ctx: StageContext) -> int:
        if ctx.attempt == 1 and not seen_cancel:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen_cancel.append(ctx.attempt)
                raise
        return ctx.attempt

    return (
        WorkflowBuilder("stall")
        .pipe(define_stage(id="s", execute=stall, retry=RetryPolicy(max_attempts=1)))
        .build()
    )


async def _started(env: TestEnvironment) -> tuple[object, asyncio.Future[object]]:
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w1", limit=1, lease_for=30)
    task = asyncio.ensure_future(env.kernel.dispatch(JobExecute(job=job, worker_id="w1")))
    for _ in range(50):
        await asyncio.sleep(0)
    return job, task


async def test_released_attempt_is_rerun_elsewhere_without_spending_an_attempt() -> None:
    seen_cancel: list[int] = []
    env = TestEnvironment([stalling_workflow(seen_cancel)])
    run_id = await env.create_run("stall")
    job, task = await _started(env)

    result = await env.kernel.dispatch(JobRelease(job=job, worker_id="w1"))
    assert result.released
    with pytest.raises(LeaseLost):  # the released code was stopped; its result is refused
        await task
    assert seen_cancel == [1]
    stage = (await env.stages(run_id))["s"]
    assert stage.status is StageStatus.PENDING
    assert (stage.attempt, stage.uncounted) == (2, 1)  # a new number, not counted

    await env.run_until_idle()  # another worker takes attempt 2 (max_attempts is 1)
    run = await env.get_run(run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == 2
    again = await env.kernel.dispatch(JobRelease(job=job, worker_id="w1"))
    assert not again.released
    released = [e for e in env.sink.events if isinstance(e, StageReleased)]
    assert [(e.attempt, e.next_attempt, e.worker_id) for e in released] == [(1, 2, "w1")]


async def test_an_early_heartbeat_is_not_a_lost_lease() -> None:
    env = TestEnvironment([stalling_workflow([1])])
    await env.create_run("stall")
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w1", limit=1, lease_for=30)
    beat = await env.kernel.dispatch(JobHeartbeat(job=job, worker_id="w1"))
    assert not beat.started
    assert not beat.cancelled


async def test_a_heartbeat_after_the_lease_was_lost_stops_the_running_code() -> None:
    seen_cancel: list[int] = []
    env = TestEnvironment(
        [stalling_workflow(seen_cancel)], settings=KernelSettings(lease_seconds=30)
    )
    await env.create_run("stall")
    job, task = await _started(env)
    env.clock.advance(31)
    await env.kernel.dispatch(LeaseReapStale())
    with pytest.raises(LeaseLost):
        await env.kernel.dispatch(JobHeartbeat(job=job, worker_id="w1"))
    with pytest.raises(LeaseLost):
        await task
    assert seen_cancel == [1]


async def test_a_heartbeat_extends_the_lease_and_writes_progress() -> None:
    gate = asyncio.Event()

    async def reporting(ctx: StageContext) -> str:
        ctx.progress(40, "two of five")
        ctx.log("info", "working", step=2)
        await gate.wait()
        return "ok"

    wf = WorkflowBuilder("p").pipe(define_stage(id="s", execute=reporting)).build()
    env = TestEnvironment([wf], settings=KernelSettings(lease_seconds=30))
    run_id = await env.create_run("p")
    job, task = await _started(env)
    env.clock.advance(20)
    beat = await env.kernel.dispatch(JobHeartbeat(job=job, worker_id="w1"))
    assert beat.started
    assert beat.lease_expires_at == env.clock.now() + timedelta(seconds=30)
    stage = (await env.stages(run_id))["s"]
    assert (stage.progress, stage.progress_message) == (40, "two of five")
    assert isinstance(env.persistence, InMemoryPersistence)
    logs = env.persistence.snapshot_logs(run_id)
    assert [(log.message, log.fields) for log in logs] == [("working", {"step": 2})]
    env.clock.advance(20)  # past the first lease, within the extended one
    assert (await env.kernel.dispatch(LeaseReapStale())).retried == 0
    gate.set()
    assert (await task).outcome == "completed"
    async with env.persistence.transaction() as tx:
        types = [e.type for e in await tx.outbox.events(run_id)]
    assert types[types.index("stage.started") :] == [
        "stage.started",
        "stage.progress",
        "stage.completed",
        "run.completed",
    ]


async def test_cancelling_a_worker_while_it_builds_the_context_is_not_a_failed_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task cancelled (a drain, a shutdown) before user code starts propagates the
    cancellation: no failed attempt is recorded; the lease is left to be released or reaped."""
    import stagewise._h_jobs as jobs

    building = asyncio.Event()

    async def blocked_build(*args: object, **kwargs: object) -> None:
        building.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(jobs, "build_context", blocked_build)
    env = TestEnvironment([stalling_workflow([1])])
    run_id = await env.create_run("stall")
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w1", limit=1, lease_for=30)
    task = asyncio.ensure_future(env.kernel.dispatch(JobExecute(job=job, worker_id="w1")))
    await asyncio.wait_for(building.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stage = (await env.stages(run_id))["s"]
    assert stage.status is StageStatus.RUNNING  # still held: released or reaped later
    assert stage.error is None
    assert "stage.retrying" not in env.sink.types(run_id)


async def test_a_fake_clock_sleep_counts_from_the_call_not_from_the_first_await() -> None:
    from stagewise.testing import FakeClock

    clock = FakeClock()
    start = clock.now()
    sleeper = asyncio.ensure_future(clock.sleep(60))  # not yet running
    clock.advance(60)  # the clock moves before the sleeper first runs
    await asyncio.wait_for(sleeper, 1)
    assert clock.now() - start == timedelta(seconds=60)
