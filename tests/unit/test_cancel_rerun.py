"""run.cancel reaches running code and refuses its late commit; run.rerunFrom re-executes
a stage and the later ones only."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from stagewise import (
    ConflictError,
    InvalidTransitionError,
    JobExecute,
    RetryPolicy,
    RunCancel,
    RunClaimPending,
    RunNotFoundError,
    RunRerunFrom,
    RunStatus,
    StageContext,
    StageNotFoundError,
    StageStatus,
    WorkflowBuilder,
    define_stage,
)
from stagewise.testing import TestEnvironment
from tests.unit.workflows import Num, four_groups


async def test_cancel_during_a_running_stage() -> None:
    saw_cancel = asyncio.Event()
    sync_saw: list[bool] = []
    asyncio.Event()

    async def waits(ctx: StageContext) -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            saw_cancel.set()
            raise
        return "never"

    def polls(ctx: StageContext) -> str:
        import time

        while not ctx.cancelled.is_cancelled:
            time.sleep(0.001)
        sync_saw.append(True)
        return "late result"

    wf = (
        WorkflowBuilder("c")
        .parallel(
            [
                define_stage(id="a", execute=waits),
                define_stage(id="b", execute=polls),
                define_stage(id="q", execute=lambda c: 1),
            ]
        )
        .pipe(define_stage(id="never", execute=lambda c: 0))
        .build()
    )
    env = TestEnvironment([wf])
    run_id = await env.create_run("c")
    await env.kernel.dispatch(RunClaimPending())
    jobs = {j.stage_id: j for j in await env.queue.dequeue(worker_id="w", limit=2, lease_for=30)}
    assert set(jobs) == {"a", "b"}  # "q" is still queued
    running = [
        asyncio.ensure_future(env.kernel.dispatch(JobExecute(job=j, worker_id="w")))
        for j in jobs.values()
    ]
    await asyncio.sleep(0.05)

    result = await env.kernel.dispatch(RunCancel(run_id=run_id, reason="user asked"))
    assert result.cancelled and result.status is RunStatus.CANCELLED
    outcomes = await asyncio.gather(*running)

    assert saw_cancel.is_set() and sync_saw == [True]
    assert {o.outcome for o in outcomes} == {"cancelled"}  # late commits refused
    assert len(env.queue) == 0  # the queued job for "q" was dropped
    stages = await env.stages(run_id)
    assert {s.status for s in stages.values()} == {StageStatus.CANCELLED}
    assert all(s.output is None for s in stages.values())
    run = await env.get_run(run_id)
    assert run.status is RunStatus.CANCELLED
    await env.run_until_idle()
    assert env.sink.types(run_id)[-1] == "run.cancelled"
    assert env.sink.of_run(run_id)[-1].reason == "user asked"  # type: ignore[union-attr]


async def test_cancelling_a_finished_run_is_a_clear_no_op() -> None:
    env = TestEnvironment([four_groups()])
    run = await env.run("four", {"n": 1})
    events = len(env.persistence.snapshot_events())
    result = await env.kernel.dispatch(RunCancel(run_id=run.run_id))
    assert not result.cancelled and result.status is RunStatus.COMPLETED
    assert len(env.persistence.snapshot_events()) == events
    with pytest.raises(RunNotFoundError):
        await env.kernel.dispatch(RunCancel(run_id="missing"))


async def test_a_pending_run_can_be_cancelled_before_it_starts() -> None:
    env = TestEnvironment([four_groups()])
    run_id = await env.create_run("four", {"n": 1})
    await env.kernel.dispatch(RunCancel(run_id=run_id))
    await env.run_until_idle()
    assert (await env.get_run(run_id)).status is RunStatus.CANCELLED
    assert await env.stages(run_id) == {}


async def test_rerun_from_a_middle_stage_reexecutes_it_and_later_stages_only() -> None:
    calls: Counter[str] = Counter()

    def counted(stage_id: str, fn):  # type: ignore[no-untyped-def]
        def execute(ctx: StageContext) -> Num:
            calls[stage_id] += 1
            return fn(ctx)

        return define_stage(id=stage_id, input=Num, output=Num, execute=execute)

    wf = (
        WorkflowBuilder("rr", input=Num, output=Num)
        .pipe(counted("one", lambda c: Num(n=c.input.n + 1)))
        .parallel(
            [
                counted("two", lambda c: Num(n=c.input.n * 10)),
                define_stage(id="side", execute=lambda c: calls.update(["side"]) or 0),
            ]
        )
        .pipe(
            define_stage(
                id="three",
                output=Num,
                execute=lambda c: calls.update(["three"]) or Num(n=c.input["two"]["n"]),
            )
        )
        .build()
    )
    env = TestEnvironment([wf])
    run = await env.run("rr", {"n": 1})
    assert run.output == {"n": 20}

    result = await env.kernel.dispatch(RunRerunFrom(run_id=run.run_id, stage_id="two"))
    assert result.reset_stages == ["two"]
    await env.run_until_idle()
    run = await env.get_run(run.run_id)
    assert run.status is RunStatus.COMPLETED and run.output == {"n": 20}
    assert calls == Counter({"one": 1, "two": 2, "side": 1, "three": 2})
    assert env.sink.types(run.run_id).count("run.completed") == 2


async def test_rerun_is_refused_for_an_active_run_or_an_unknown_stage() -> None:
    env = TestEnvironment([four_groups()])
    run_id = await env.create_run("four", {"n": 1})
    await env.kernel.dispatch(RunClaimPending())
    with pytest.raises(InvalidTransitionError) as err:
        await env.kernel.dispatch(RunRerunFrom(run_id=run_id, stage_id="join"))
    assert (err.value.entity, err.value.state, err.value.command) == (
        "run",
        "RUNNING",
        "run.rerunFrom",
    )
    await env.run_until_idle()
    with pytest.raises(StageNotFoundError):
        await env.kernel.dispatch(RunRerunFrom(run_id=run_id, stage_id="nope"))


async def test_rerun_needs_every_earlier_stage_completed() -> None:
    def fail(ctx: StageContext) -> None:
        raise ValueError("no")

    wf = (
        WorkflowBuilder("f")
        .pipe(define_stage(id="a", execute=fail, retry=RetryPolicy(max_attempts=1)))
        .pipe(define_stage(id="b", execute=lambda c: 1))
        .build()
    )
    env = TestEnvironment([wf])
    run = await env.run("f")
    assert run.status is RunStatus.FAILED
    with pytest.raises(ConflictError, match="earlier stage 'a' is FAILED"):
        await env.kernel.dispatch(RunRerunFrom(run_id=run.run_id, stage_id="b"))
    assert (await env.get_run(run.run_id)).status is RunStatus.FAILED  # nothing written
    await env.kernel.dispatch(RunRerunFrom(run_id=run.run_id, stage_id="a"))
    await env.run_until_idle()
    assert (await env.get_run(run.run_id)).status is RunStatus.FAILED  # fails again, cleanly


async def test_a_rerun_goes_on_numbering_attempts_with_a_fresh_retry_budget() -> None:
    seen: list[int] = []

    def fails(ctx: StageContext) -> None:
        seen.append(ctx.attempt)
        raise ValueError(f"attempt {ctx.attempt}")

    wf = (
        WorkflowBuilder("twice")
        .pipe(define_stage(id="a", execute=fails, retry=RetryPolicy(max_attempts=2)))
        .build()
    )
    env = TestEnvironment([wf])
    run = await env.run("twice")
    assert run.status is RunStatus.FAILED and seen == [1, 2]

    await env.kernel.dispatch(RunRerunFrom(run_id=run.run_id, stage_id="a"))
    await env.run_until_idle()
    # Two more attempts (the policy's two, none of the earlier ones counted), numbered on.
    assert seen == [1, 2, 3, 4]
    stage = (await env.stages(run.run_id))["a"]
    assert (stage.status, stage.attempt, stage.uncounted) == (StageStatus.FAILED, 4, 2)
    started = [e.attempt for e in env.sink.events if e.type == "stage.started"]  # type: ignore[union-attr]
    assert started == [1, 2, 3, 4]  # never a number twice


async def test_cancelling_a_running_attempt_ends_it_in_the_history() -> None:
    async def waits(ctx: StageContext) -> None:
        await asyncio.Event().wait()

    env = TestEnvironment([WorkflowBuilder("w").pipe(define_stage(id="a", execute=waits)).build()])
    run_id = await env.create_run("w")
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w1", limit=1, lease_for=30)
    task = asyncio.ensure_future(env.kernel.dispatch(JobExecute(job=job, worker_id="w1")))
    for _ in range(50):
        await asyncio.sleep(0)
    await env.kernel.dispatch(RunCancel(run_id=run_id, reason="not needed"))
    await task
    await env.run_until_idle()
    types = env.sink.types(run_id)
    assert (
        types.index("stage.started") < types.index("stage.cancelled") < types.index("run.cancelled")
    )


async def test_stages_after_the_rerun_one_go_on_numbering_too() -> None:
    wf = (
        WorkflowBuilder("two")
        .pipe(define_stage(id="a", execute=lambda ctx: ctx.attempt))
        .pipe(define_stage(id="b", execute=lambda ctx: ctx.attempt))
        .build()
    )
    env = TestEnvironment([wf])
    run = await env.run("two")
    for _ in range(2):
        await env.kernel.dispatch(RunRerunFrom(run_id=run.run_id, stage_id="a"))
        await env.run_until_idle()
    stages = await env.stages(run.run_id)
    assert {s.stage_id: (s.attempt, s.uncounted) for s in stages.values()} == {
        "a": (3, 2),
        "b": (3, 2),  # its row was deleted twice; the run kept its numbers
    }
    assert (await env.get_run(run.run_id)).output == 3
