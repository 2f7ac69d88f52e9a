"""The kernel's end-to-end scenarios on every backend: memory, SQLite and PostgreSQL.

The unit tests pin these behaviours on the in-memory adapters; here the same stories run
through the real SQL adapters, asserting only through the ports.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stagewise import (
    Event,
    InvalidRunInputError,
    JobExecute,
    KernelSettings,
    LeaseLost,
    LeaseReapStale,
    NotReady,
    PluginReplayDLQ,
    Ready,
    RetryPolicy,
    RunCancel,
    RunClaimPending,
    RunCreate,
    RunRerunFrom,
    RunStatus,
    RunTransition,
    StageContext,
    StageStatus,
    Suspend,
    WorkflowBuilder,
    define_async_batch_stage,
    define_plugin,
    define_stage,
)
from stagewise.testing import TestEnvironment
from tests.conftest import Adapters
from tests.contract.factories import dead_letters
from tests.unit.workflows import Num, four_groups


def make_env(backend: Adapters, workflows: list[Any], **kwargs: Any) -> TestEnvironment:
    return TestEnvironment(
        workflows,
        persistence=backend.persistence,
        job_transport=backend.job_transport,  # type: ignore[arg-type]
        blob_store=backend.blob_store,
        clock=backend.clock,
        **kwargs,
    )


async def queued_jobs(env: TestEnvironment) -> int:
    jobs = await env.queue.dequeue(worker_id="probe", limit=100, lease_for=1)
    return len(jobs)


async def test_a_four_group_run_completes_with_its_data_flow(backend: Adapters) -> None:
    env = make_env(backend, [four_groups()])
    run = await env.run("four", {"n": 1})
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"n": 8}
    events = env.sink.of_run(run.run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    stages = await env.stages(run.run_id)
    assert stages["join"].output == {"n": 7}
    assert await queued_jobs(env) == 0


async def test_idempotent_create_and_refused_input_write_nothing(backend: Adapters) -> None:
    env = make_env(backend, [four_groups()])
    cmd = RunCreate(workflow_id="four", input={"n": 1}, idempotency_key="once")
    first = await env.kernel.dispatch(cmd)
    again = await env.kernel.dispatch(cmd)
    assert again.run_id == first.run_id
    assert not again.created
    with pytest.raises(InvalidRunInputError):
        await env.kernel.dispatch(RunCreate(workflow_id="four", input={"n": "x"}))
    async with env.persistence.transaction() as tx:
        runs = await tx.runs.find()
        events = await tx.outbox.events(first.run_id)
    assert [r.run_id for r in runs] == [first.run_id]
    assert [e.type for e in events] == ["run.created"]


async def test_retries_with_backoff_then_the_kernel_fails_the_run(backend: Adapters) -> None:
    calls: list[int] = []

    def failing(ctx: StageContext) -> None:
        calls.append(ctx.attempt)
        raise ConnectionError("down")

    policy = RetryPolicy(max_attempts=3, initial_backoff=5, jitter=0)
    wf = (
        WorkflowBuilder("f")
        .pipe(define_stage(id="s", execute=failing, retry=policy))
        .pipe(define_stage(id="never", execute=lambda c: 1))
        .build()
    )
    env = make_env(backend, [wf])
    run = await env.run("f")
    assert run.status is RunStatus.FAILED
    assert calls == [1, 2, 3]
    assert (env.clock.now() - run.created_at).total_seconds() == 15  # 5 + 10
    assert await queued_jobs(env) == 0


async def test_a_late_result_is_refused_with_lease_lost(backend: Adapters) -> None:
    release = asyncio.Event()
    running = asyncio.Event()

    async def gated(ctx: StageContext) -> int:
        if ctx.attempt == 1:
            running.set()
            await release.wait()
        return ctx.attempt

    wf = WorkflowBuilder("l").pipe(define_stage(id="s", execute=gated)).build()
    env = make_env(backend, [wf], settings=KernelSettings(lease_seconds=30))
    run_id = await env.create_run("l")
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="slow", limit=1, lease_for=30)
    slow = asyncio.ensure_future(env.kernel.dispatch(JobExecute(job=job, worker_id="slow")))
    await asyncio.wait_for(running.wait(), 10)
    env.clock.advance(31)
    assert (await env.kernel.dispatch(LeaseReapStale())).retried == 1
    await env.run_until_idle()
    release.set()
    with pytest.raises(LeaseLost):
        await slow
    run = await env.get_run(run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == 2
    assert env.sink.types(run_id).count("stage.completed") == 1


async def test_a_suspended_stage_is_polled_and_resumes(backend: Adapters) -> None:
    checks: list[int] = []

    async def submit(ctx: StageContext) -> Suspend:
        return Suspend(state={"id": 7}, poll_interval=60, max_wait=3600)

    def check(state: dict[str, int], ctx: StageContext) -> Ready | NotReady:
        checks.append(state["id"])
        return Ready(output=state["id"] * 2) if len(checks) == 2 else NotReady()

    wf = (
        WorkflowBuilder("b")
        .parallel(
            [
                define_async_batch_stage(id="ext", execute=submit, check_completion=check),
                define_stage(id="side", execute=lambda c: "x"),
            ]
        )
        .pipe(define_stage(id="after", execute=lambda c: c.input["ext"] + 1))
        .build()
    )
    env = make_env(backend, [wf])
    run = await env.run("b")
    assert run.status is RunStatus.COMPLETED
    assert run.output == 15
    assert checks == [7, 7]
    assert (env.clock.now() - run.created_at).total_seconds() == 120


async def test_cancel_refuses_the_running_stage_and_drops_queued_jobs(backend: Adapters) -> None:
    started = asyncio.Event()

    def polls(ctx: StageContext) -> str:
        started.set()
        while not ctx.cancelled:
            pass
        return "too late"

    wf = (
        WorkflowBuilder("c")
        .parallel([define_stage(id="a", execute=polls), define_stage(id="b", execute=lambda c: 1)])
        .build()
    )
    env = make_env(backend, [wf])
    run_id = await env.create_run("c")
    await env.kernel.dispatch(RunClaimPending())
    jobs = await env.queue.dequeue(worker_id="w", limit=2, lease_for=30)
    (job_a,) = [j for j in jobs if j.stage_id == "a"]
    running = asyncio.ensure_future(env.kernel.dispatch(JobExecute(job=job_a, worker_id="w")))
    await asyncio.wait_for(started.wait(), 10)
    await env.queue.release_expired(worker_id="w")  # put "b" back in the queue
    assert (await env.kernel.dispatch(RunCancel(run_id=run_id))).cancelled
    assert (await running).outcome == "cancelled"
    assert await queued_jobs(env) == 0
    stages = await env.stages(run_id)
    assert {s.status for s in stages.values()} == {StageStatus.CANCELLED}
    assert (await env.get_run(run_id)).status is RunStatus.CANCELLED


async def test_rerun_from_a_middle_stage(backend: Adapters) -> None:
    env = make_env(backend, [four_groups()])
    run = await env.run("four", {"n": 1})
    before = await env.stages(run.run_id)
    result = await env.kernel.dispatch(RunRerunFrom(run_id=run.run_id, stage_id="join"))
    assert result.reset_stages == ["join"]
    await env.run_until_idle()
    after = await env.stages(run.run_id)
    assert (await env.get_run(run.run_id)).output == {"n": 8}
    assert after["start"] == before["start"]
    assert after["left"] == before["left"]
    assert after["join"].job_id != before["join"].job_id  # a new delivery ran it


async def test_plugin_dead_letters_and_replay(backend: Adapters) -> None:
    broken = {"on": True}
    got: list[int] = []

    def handle(event: Event) -> None:
        if broken["on"] and event.seq == 1:
            raise RuntimeError("hook down")
        got.append(event.seq)

    env = make_env(
        backend,
        [four_groups()],
        plugins=[define_plugin(id="hook", handle=handle)],
        settings=KernelSettings(outbox_max_attempts=2),
    )
    run = await env.run("four", {"n": 1})
    assert 1 not in got
    dead = await dead_letters(backend)
    assert [(d.delivery.consumer, d.delivery.seq) for d in dead] == [("plugin:hook", 1)]
    broken["on"] = False
    assert (await env.kernel.dispatch(PluginReplayDLQ(plugin_id="hook"))).replayed == 1
    await env.run_until_idle()
    assert sorted(got) == list(range(1, len(env.sink.of_run(run.run_id)) + 1))


async def test_concurrent_transitions_advance_a_run_once(backend: Adapters) -> None:
    env = make_env(backend, [four_groups()])
    run_id = await env.create_run("four", {"n": 1})
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
    await env.kernel.dispatch(JobExecute(job=job, worker_id="w"))  # group 1 done, 2 queued
    results = await asyncio.gather(
        *(env.kernel.dispatch(RunTransition(run_id=run_id)) for _ in range(4))
    )
    assert {r.decision for r in results} == {"noop"}
    stages = await env.stages(run_id)
    assert sorted(stages) == ["left", "right", "start"]
    assert await queued_jobs(env) == 2


async def test_large_outputs_live_in_the_blob_store(backend: Adapters) -> None:
    big = "y" * 100_000
    wf = (
        WorkflowBuilder("big")
        .pipe(define_stage(id="make", output=Num, execute=lambda c: {"n": len(big)}))
        .pipe(define_stage(id="blob", execute=lambda c: big))
        .pipe(define_stage(id="len", execute=lambda c: len(c.input)))
        .build()
    )
    env = make_env(backend, [wf])
    run = await env.run("big")
    assert run.output == 100_000
    stages = await env.stages(run.run_id)
    assert stages["blob"].output_ref is not None
    assert await env.blobs.has(stages["blob"].output_ref)
