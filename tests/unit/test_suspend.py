"""Async-batch stages suspend, are polled on schedule, resume, or fail at max_wait."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from stagewise import (
    JobExecute,
    KernelSettings,
    NotReady,
    Ready,
    RunClaimPending,
    RunStatus,
    StageContext,
    StagePollSuspended,
    StageStatus,
    Suspend,
    WorkflowBuilder,
    define_async_batch_stage,
    define_sleep_stage,
    define_stage,
)
from stagewise.testing import InMemoryBlobStore, TestEnvironment

env_holder: list[TestEnvironment] = []


def batch_workflow(ready_after: int, max_wait: float = 3600) -> tuple[Any, list[Any]]:
    checks: list[Any] = []

    async def submit(ctx: StageContext) -> Suspend:
        assert not env_holder[0].persistence.in_transaction
        return Suspend(state={"job": "ext-1"}, poll_interval=60, max_wait=max_wait)

    def check(state: dict[str, str], ctx: StageContext) -> Ready | NotReady:
        assert not env_holder[0].persistence.in_transaction
        checks.append((env_holder[0].clock.now(), state, ctx.resume_state))
        if len(checks) >= ready_after:
            return Ready(output={"result": state["job"].upper()})
        return NotReady(next_check_in=120 if len(checks) == 1 else None)

    wf = (
        WorkflowBuilder("batch")
        .pipe(define_async_batch_stage(id="ext", execute=submit, check_completion=check))
        .pipe(define_stage(id="after", execute=lambda ctx: ctx.input["result"] + "!"))
        .build()
    )
    return wf, checks


async def test_a_suspended_stage_is_polled_on_schedule_and_resumes_with_its_output() -> None:
    wf, checks = batch_workflow(ready_after=3)
    env = TestEnvironment([wf])
    env_holder[:] = [env]
    run_id = await env.create_run("batch")
    await env.run_until_idle()
    run = await env.get_run(run_id)

    assert run.status is RunStatus.COMPLETED and run.output == "EXT-1!"
    start = run.created_at
    # first check after poll_interval (60 s); NotReady(120) -> +120; NotReady() -> +60
    assert [(t - start).total_seconds() for t, _, _ in checks] == [60, 180, 240]
    assert all(state == {"job": "ext-1"} and resume == state for _, state, resume in checks)
    types = env.sink.types(run_id)
    assert "stage.suspended" in types and "run.suspended" in types
    assert types.index("run.suspended") < types.index(
        "stage.completed", types.index("run.suspended")
    )


async def test_a_suspended_stage_fails_when_max_wait_passes() -> None:
    wf, checks = batch_workflow(ready_after=10_000, max_wait=300)
    env = TestEnvironment([wf])
    env_holder[:] = [env]
    run_id = await env.create_run("batch")
    await env.run_until_idle()
    run = await env.get_run(run_id)

    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.type == "SuspendTimeoutError"
    assert (env.clock.now() - run.created_at).total_seconds() == 300
    # checks at 60, 180, 240 and a last one at the deadline (300), still not ready
    assert [(t - run.created_at).total_seconds() for t, _, _ in checks] == [60, 180, 240, 300]
    assert "300" in run.error.message
    stages = await env.stages(run_id)
    assert stages["ext"].status is StageStatus.FAILED and "after" not in stages


async def test_check_completion_raising_fails_the_stage() -> None:
    async def submit(ctx: StageContext) -> Suspend:
        return Suspend(state=1, poll_interval=5)

    def check(state: int, ctx: StageContext) -> Ready:
        raise RuntimeError("external job failed")

    wf = (
        WorkflowBuilder("x")
        .pipe(define_async_batch_stage(id="s", execute=submit, check_completion=check))
        .build()
    )
    env = TestEnvironment([wf])
    run = await env.run("x")
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.message == "external job failed"


async def test_only_async_batch_stages_may_suspend() -> None:
    wf = WorkflowBuilder("y").pipe(define_stage(id="s", execute=lambda c: Suspend())).build()
    run = await TestEnvironment([wf]).run("y")
    assert run.status is RunStatus.FAILED
    assert run.error is not None and "define_async_batch_stage" in run.error.message


async def test_a_blob_store_outage_while_checking_reschedules_the_check() -> None:
    # The stage's check never ran (its input could not be read): an outage, not the
    # stage's failure. It is checked again shortly, and resumes.
    class Flaky(InMemoryBlobStore):
        down = 0

        async def get(self, key: str) -> bytes:
            if self.down:
                self.down -= 1
                raise ConnectionError("blob store unreachable")
            return await super().get(key)

    blobs = Flaky()
    wf = (
        WorkflowBuilder("big")
        .pipe(define_stage(id="large", execute=lambda ctx: {"rows": list(range(500))}))
        .pipe(define_sleep_stage(id="nap", duration=600))
        .pipe(define_stage(id="count", execute=lambda ctx: len(ctx.input["rows"])))
        .build()
    )
    settings = KernelSettings(inline_output_bytes=64)  # large's output is a blob
    env = TestEnvironment([wf], blob_store=blobs, settings=settings)
    run_id = await env.create_run("big")
    await env.kernel.dispatch(RunClaimPending())
    for _ in range(2):
        (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
        await env.kernel.dispatch(JobExecute(job=job, worker_id="w"))
    env.clock.advance(600)
    blobs.down = 1
    polled = await env.kernel.dispatch(StagePollSuspended(poller_id="p"))
    assert (polled.checked, polled.failed, polled.rescheduled) == (1, 0, 1)
    nap = (await env.stages(run_id))["nap"]
    assert nap.status is StageStatus.SUSPENDED
    assert nap.due_at == env.clock.now() + timedelta(seconds=2)
    await env.run_until_idle()
    run = await env.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, 500)
