"""`run_until_idle` takes the same steps however slow the machine: the fault sweeps place a
fault at each call a play makes, and users' tests count on the same run taking the same
path. A stage that is slow in real time (a thread that takes a while, async code that takes
many turns of the event loop) must not add passes of the driver's loop."""

from __future__ import annotations

import asyncio
import time

from stagewise import RetryPolicy, RunStatus, StageContext, WorkflowBuilder, define_stage
from stagewise.testing import TestEnvironment


def workflow(thread_seconds: float, loop_turns: int) -> object:
    def on_a_thread(ctx: StageContext) -> int:
        time.sleep(thread_seconds)
        return 1

    async def many_turns(ctx: StageContext) -> int:
        for _ in range(loop_turns):
            await asyncio.sleep(0)
        return 2

    return (
        WorkflowBuilder("slow")
        .parallel(
            [
                define_stage(id="thread", execute=on_a_thread),
                define_stage(id="turns", execute=many_turns),
            ]
        )
        .pipe(define_stage(id="after", execute=lambda ctx: 3))
        .build()
    )


async def steps(thread_seconds: float, loop_turns: int) -> int:
    env = TestEnvironment([workflow(thread_seconds, loop_turns)])  # type: ignore[list-item]
    run_id = await env.create_run("slow")
    report = await env.run_until_idle()
    assert (await env.get_run(run_id)).status is RunStatus.COMPLETED
    return report.steps


async def test_a_slow_thread_or_a_long_coroutine_adds_no_passes() -> None:
    quick = await steps(0.0, 1)
    # 100 ms on a thread is fifty of the driver's 2 ms waits; 20,000 turns of the loop
    # take well over 2 ms too. Neither may change the path.
    assert await steps(0.1, 1) == quick
    assert await steps(0.0, 20_000) == quick


async def test_a_sync_stage_that_outlives_its_timeout_still_times_out() -> None:
    # The driver waits for threads in real time, but not for ever: past its patience the
    # fake clock moves on and the stage's timeout is met (the thread is left to finish).
    release = asyncio.Event()

    def hangs(ctx: StageContext) -> int:
        while not ctx.cancelled.is_cancelled and not release.is_set():
            time.sleep(0.01)
        return 1

    wf = (
        WorkflowBuilder("hang")
        .pipe(define_stage(id="h", execute=hangs, timeout=30, retry=RetryPolicy(max_attempts=1)))
        .build()
    )
    env = TestEnvironment([wf])
    run_id = await env.create_run("hang")
    try:
        await env.run_until_idle()
    finally:
        release.set()
    run = await env.get_run(run_id)
    assert run.status is RunStatus.FAILED
