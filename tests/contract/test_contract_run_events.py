"""Run events (values a run publishes for its clients), on memory, SQLite and PostgreSQL:
`ctx.set_event(key, value)` is committed with the attempt's outcome (a failed or fenced
attempt publishes nothing), the latest value wins, and `Kernel.get_event` waits for one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stagewise import (
    InvalidInputError,
    JobExecute,
    RetryPolicy,
    RunClaimPending,
    RunNotFoundError,
    RunSignal,
    StageContext,
    WorkflowBuilder,
    define_signal_stage,
    define_stage,
)
from tests.conftest import Adapters
from tests.contract.test_kernel_scenarios import make_env


def publishing() -> Any:
    def first(ctx: StageContext) -> int:
        ctx.set_event("status", "started")
        ctx.set_event("progress", {"done": 1, "of": 2})
        if ctx.attempt == 1:
            ctx.set_event("doomed", True)  # this attempt fails: never published
            raise ConnectionError("once")
        return 1

    def second(ctx: StageContext) -> int:
        ctx.set_event("progress", {"done": 2, "of": 2})  # the latest wins
        return 2

    retry = RetryPolicy(max_attempts=2, initial_backoff=1)
    return (
        WorkflowBuilder("publishes")
        .pipe(define_stage(id="first", execute=first, retry=retry))
        .pipe(define_signal_stage(id="gate", topic="go"))
        .pipe(define_stage(id="second", execute=second))
        .build()
    )


async def test_values_are_published_with_the_outcome_and_the_latest_wins(
    backend: Adapters,
) -> None:
    env = make_env(backend, [publishing()])
    run_id = await env.create_run("publishes")
    await env.run_until_idle()  # first retried once, then the run waits on "go"
    assert await env.kernel.get_event(run_id, "status") == "started"
    assert await env.kernel.get_event(run_id, "progress") == {"done": 1, "of": 2}
    assert await env.kernel.get_event(run_id, "doomed") is None  # the failed attempt's
    await env.kernel.dispatch(RunSignal(run_id=run_id, topic="go"))
    await env.run_until_idle()
    assert await env.kernel.get_event(run_id, "progress") == {"done": 2, "of": 2}
    listed = {(v.key, v.stage_id, v.attempt) for v in await env.kernel.list_events(run_id)}
    assert listed == {("progress", "second", 1), ("status", "first", 2)}


async def test_get_event_waits_for_a_value_this_process_commits(backend: Adapters) -> None:
    env = make_env(backend, [publishing()])
    run_id = await env.create_run("publishes")
    waiting = asyncio.ensure_future(env.kernel.get_event(run_id, "status", timeout=None))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await env.run_until_idle()
    assert await asyncio.wait_for(waiting, 10) == "started"


async def test_get_event_gives_none_after_its_timeout_or_once_the_run_ends(
    backend: Adapters,
) -> None:
    env = make_env(backend, [publishing()])
    run_id = await env.create_run("publishes")
    waiting = asyncio.ensure_future(env.kernel.get_event(run_id, "never", timeout=60))
    await asyncio.sleep(0.01)
    env.clock.advance(61)
    assert await asyncio.wait_for(waiting, 10) is None
    # A run that ends without the key: a waiter without a timeout is answered by the
    # commit that ends it (the driver runs only once the wait is set up, so that it does
    # not move the fake clock for the waiter's polls).
    await env.run_until_idle()  # the run waits on "go"
    waiting = asyncio.ensure_future(env.kernel.get_event(run_id, "never", timeout=None))
    await asyncio.sleep(0.05)
    await env.kernel.dispatch(RunSignal(run_id=run_id, topic="go"))
    await env.run_until_idle()
    assert await asyncio.wait_for(waiting, 10) is None
    assert await env.kernel.get_event(run_id, "never", timeout=None) is None


async def test_a_fenced_attempt_publishes_nothing(backend: Adapters) -> None:
    def sets(ctx: StageContext) -> int:
        ctx.set_event("who", f"attempt {ctx.attempt}")
        return ctx.attempt

    wf = WorkflowBuilder("fenced").pipe(define_stage(id="s", execute=sets)).build()
    env = make_env(backend, [wf])
    run_id = await env.create_run("fenced")
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
    await env.kernel.dispatch(JobExecute(job=job, worker_id="w"))
    again = await env.kernel.dispatch(JobExecute(job=job, worker_id="late"))  # a duplicate
    assert again.outcome in ("completed", "lease_lost")
    (only,) = await env.kernel.list_events(run_id)
    assert (only.value, only.attempt) == ("attempt 1", 1)


async def test_bad_keys_and_values_are_refused_where_they_are_set(backend: Adapters) -> None:
    said: list[str] = []

    def sets(ctx: StageContext) -> None:
        for key, value in (("", 1), ("k", object()), ("k", float("nan")), ("k", "\ud800")):
            try:
                ctx.set_event(key, value)
            except InvalidInputError as exc:
                said.append(exc.message)

    wf = WorkflowBuilder("bad").pipe(define_stage(id="s", execute=sets)).build()
    env = make_env(backend, [wf])
    run = await env.run("bad")
    assert len(said) == 4 and "1-200 characters" in said[0]
    assert await env.kernel.list_events(run.run_id) == []
    with pytest.raises(RunNotFoundError):
        await env.kernel.get_event("no-such-run", "k")
    with pytest.raises(RunNotFoundError):
        await env.kernel.list_events("no-such-run")
