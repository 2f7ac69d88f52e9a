"""Retries with backoff on the clock; fencing of late, stale and duplicate deliveries."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import pytest

from stagewise import (
    JobExecute,
    KernelSettings,
    LeaseLost,
    LeaseReapStale,
    RetryPolicy,
    RunClaimPending,
    RunStatus,
    StageContext,
    StageStatus,
    WorkflowBuilder,
    define_stage,
)
from stagewise.testing import TestEnvironment
from tests.unit.workflows import Num


def flaky(failures: int, calls: list[int]) -> object:
    async def execute(ctx: StageContext) -> int:
        calls.append(ctx.attempt)
        if len(calls) <= failures:
            raise ConnectionError(f"boom {len(calls)}")
        return 42

    return execute


async def test_a_failing_stage_is_retried_with_backoff_on_the_clock_then_succeeds() -> None:
    calls: list[int] = []
    policy = RetryPolicy(max_attempts=3, initial_backoff=10, multiplier=3, jitter=0)
    wf = WorkflowBuilder("r").pipe(define_stage(id="s", execute=flaky(2, calls), retry=policy))
    env = TestEnvironment([wf.build()])
    run = await env.run("r")

    assert run.status is RunStatus.COMPLETED and run.output == 42
    assert calls == [1, 2, 3]
    started = [e.occurred_at for e in env.sink.events if e.type == "stage.started"]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(started)] == [
        10.0,
        30.0,
    ]
    retrying = [e for e in env.sink.events if e.type == "stage.retrying"]
    assert [e.next_attempt for e in retrying] == [2, 3]
    assert retrying[0].error.message == "boom 1"


async def test_when_attempts_are_spent_the_kernel_fails_the_stage_and_the_run() -> None:
    calls: list[int] = []
    after: list[int] = []
    wf = (
        WorkflowBuilder("r")
        .pipe(define_stage(id="s", execute=flaky(99, calls), retry=RetryPolicy(max_attempts=2)))
        .pipe(define_stage(id="never", execute=lambda c: after.append(1)))
        .build()
    )
    env = TestEnvironment([wf])
    run = await env.run("r")

    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.type == "ConnectionError"
    assert calls == [1, 2] and after == []
    stages = await env.stages(run.run_id)
    assert stages["s"].status is StageStatus.FAILED and "never" not in stages
    assert env.sink.types(run.run_id)[-2:] == ["stage.failed", "run.failed"]
    assert len(env.queue) == 0


async def test_validation_errors_are_not_retried() -> None:
    calls: list[int] = []

    def bad_output(ctx: StageContext) -> dict[str, str]:
        calls.append(1)
        return {"n": "not a number"}

    wf = WorkflowBuilder("v").pipe(define_stage(id="s", output=Num, execute=bad_output)).build()
    env = TestEnvironment([wf])
    run = await env.run("v")
    assert run.status is RunStatus.FAILED and calls == [1]
    assert run.error is not None and not run.error.retryable
    assert "does not match Num" in run.error.message


async def test_non_retryable_exception_types_fail_at_once() -> None:
    calls: list[int] = []

    def fails(ctx: StageContext) -> None:
        calls.append(1)
        raise KeyError("missing")

    policy = RetryPolicy(max_attempts=5, non_retryable=(KeyError,))
    wf = WorkflowBuilder("n").pipe(define_stage(id="s", execute=fails, retry=policy)).build()
    run = await TestEnvironment([wf]).run("n")
    assert run.status is RunStatus.FAILED and calls == [1]


async def test_a_stage_that_runs_past_its_timeout_is_retried_then_failed() -> None:
    calls: list[int] = []

    async def slow(ctx: StageContext) -> None:
        calls.append(1)
        await asyncio.Event().wait()  # never finishes by itself

    wf = WorkflowBuilder("t").pipe(
        define_stage(id="s", execute=slow, timeout=60, retry=RetryPolicy(max_attempts=2))
    )
    env = TestEnvironment([wf.build()])
    run = await env.run("t")
    assert run.status is RunStatus.FAILED and calls == [1, 1]
    assert run.error is not None and run.error.type == "StageTimeoutError"


async def _start_one(env: TestEnvironment, worker: str = "w1") -> tuple[object, object]:
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id=worker, limit=1, lease_for=30)
    return job, env.kernel.dispatch(JobExecute(job=job, worker_id=worker))


async def test_a_late_result_after_the_lease_expired_and_was_redelivered_is_refused() -> None:
    release = asyncio.Event()
    runs: list[int] = []

    async def gated(ctx: StageContext) -> int:
        runs.append(ctx.attempt)
        if ctx.attempt == 1:
            await release.wait()
            return 1  # too late: the lease is gone
        return 2

    wf = WorkflowBuilder("l").pipe(define_stage(id="s", execute=gated)).build()
    env = TestEnvironment([wf], settings=KernelSettings(lease_seconds=30))
    await env.create_run("l")
    job, pending = await _start_one(env)
    slow_worker = asyncio.ensure_future(pending)
    await asyncio.sleep(0.01)

    env.clock.advance(31)  # no heartbeat: the lease expires; the reaper retries the attempt
    reaped = await env.kernel.dispatch(LeaseReapStale())
    assert reaped.retried == 1
    await env.run_until_idle()  # attempt 2 runs elsewhere and completes the run
    run_id = env.persistence.snapshot_runs()[0].run_id
    before = (await env.stages(run_id), len(env.persistence.snapshot_events()))

    release.set()
    with pytest.raises(LeaseLost) as err:
        await slow_worker
    assert err.value.attempt == 1
    assert (await env.stages(run_id), len(env.persistence.snapshot_events())) == before
    assert (await env.get_run(run_id)).output == 2
    assert runs == [1, 2]


async def test_a_duplicate_delivery_is_harmless_and_a_completed_stage_never_runs_again() -> None:
    calls: list[int] = []

    def once(ctx: StageContext) -> int:
        calls.append(1)
        return 7

    wf = WorkflowBuilder("d").pipe(define_stage(id="s", execute=once)).build()
    env = TestEnvironment([wf])
    await env.create_run("d")
    job, pending = await _start_one(env)
    first = await pending
    assert first.outcome == "completed"

    again = await env.kernel.dispatch(JobExecute(job=job, worker_id="w2"))
    assert again.outcome == "completed" and again.replayed
    assert calls == [1]


async def test_two_concurrent_deliveries_of_one_job_run_it_once() -> None:
    calls: list[int] = []
    gate = asyncio.Event()

    async def once(ctx: StageContext) -> int:
        calls.append(1)
        await gate.wait()
        return 1

    wf = WorkflowBuilder("c").pipe(define_stage(id="s", execute=once)).build()
    env = TestEnvironment([wf])
    await env.create_run("c")
    job, pending = await _start_one(env)
    first = asyncio.ensure_future(pending)
    await asyncio.sleep(0.01)
    with pytest.raises(LeaseLost):
        await env.kernel.dispatch(JobExecute(job=job, worker_id="w2"))
    gate.set()
    assert (await first).outcome == "completed"
    assert calls == [1]


async def test_heartbeats_keep_a_long_stage_from_being_reaped() -> None:
    calls: list[int] = []

    async def long(ctx: StageContext) -> str:
        calls.append(1)
        await ctx_sleep(ctx, 3600)  # an hour, on the fake clock
        return "done"

    env: TestEnvironment

    async def ctx_sleep(ctx: StageContext, seconds: float) -> None:
        await env.clock.sleep(seconds)

    wf = WorkflowBuilder("h").pipe(define_stage(id="s", execute=long)).build()
    env = TestEnvironment([wf], settings=KernelSettings(lease_seconds=30))
    run = await env.run("h")
    assert run.status is RunStatus.COMPLETED and calls == [1]
    assert env.clock.now() - env.persistence.snapshot_runs()[0].created_at >= timedelta(hours=1)


async def test_a_job_delivered_before_its_backoff_is_given_back_for_later() -> None:
    calls: list[int] = []
    policy = RetryPolicy(max_attempts=2, initial_backoff=100, jitter=0)
    wf = WorkflowBuilder("e").pipe(define_stage(id="s", execute=flaky(1, calls), retry=policy))
    env = TestEnvironment([wf.build()])
    await env.create_run("e")
    job, pending = await _start_one(env)
    assert (await pending).outcome == "retry"
    (retry_job,) = env.queue.jobs()
    early = await env.kernel.dispatch(
        JobExecute(
            job=retry_job.__class__(**{**_fields(retry_job), "available_at": env.clock.now()}),
            worker_id="w",
        )
    )
    assert early.outcome == "retry" and early.retry_after == pytest.approx(100)
    assert calls == [1]


def _fields(job: object) -> dict[str, object]:
    return {k: getattr(job, k) for k in job.__slots__}  # type: ignore[attr-defined]
