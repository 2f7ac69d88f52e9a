"""Streams (a run's ordered logs for clients to follow), on memory, SQLite and PostgreSQL:
`ctx.write_stream` appends durably and at once, in order, under the run's lock and fenced
like a heartbeat; `Kernel.read_stream` follows a stream from an offset and ends at its
close or once the run has ended; a retried attempt's items stay, marked with its attempt;
another process's reader is woken by the change feed, not its poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from stagewise import (
    InvalidInputError,
    JobExecute,
    KernelSettings,
    LeaseLost,
    LeaseReapStale,
    RetryPolicy,
    RunClaimPending,
    RunNotFoundError,
    RunRerunFrom,
    StageContext,
    StreamClosedError,
    StreamItemRecord,
    WorkflowBuilder,
    WorkflowRegistry,
    define_stage,
)
from stagewise.testing import TestEnvironment
from tests.conftest import Adapters, extra_backends
from tests.contract.test_kernel_scenarios import make_env


def one_stage(workflow_id: str, execute: Any, **kwargs: Any) -> Any:
    stage = define_stage(id="s", execute=execute, **kwargs)
    return WorkflowBuilder(workflow_id).pipe(stage).build()


async def start(env: TestEnvironment, workflow_id: str) -> tuple[str, asyncio.Future[Any]]:
    """Create a run and execute its first stage in the background (no driver: nothing
    moves the fake clock)."""
    run_id = await env.create_run(workflow_id)
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
    return run_id, asyncio.ensure_future(env.kernel.dispatch(JobExecute(job=job, worker_id="w")))


async def items(env: TestEnvironment, run_id: str, key: str, **kw: Any) -> list[StreamItemRecord]:
    return [item async for item in env.kernel.read_stream(run_id, key, **kw)]


async def test_items_are_read_while_the_stage_runs_and_the_close_ends_the_reader(
    backend: Adapters,
) -> None:
    gate = asyncio.Event()

    async def talk(ctx: StageContext) -> str:
        assert await ctx.write_stream("tokens", "a") == 0
        assert await ctx.write_stream("tokens", {"b": 2}) == 1
        await gate.wait()
        await ctx.write_stream("tokens", "c")
        ctx.close_stream("tokens")
        ctx.close_stream("tokens")  # a second close changes nothing
        with pytest.raises(StreamClosedError):
            await ctx.write_stream("tokens", "after the close")
        return "done"

    env = make_env(backend, [one_stage("talk", talk)])
    run_id, executing = await start(env, "talk")
    seen: list[Any] = []
    async for item in env.kernel.read_stream(run_id, "tokens"):
        seen.append(item.value)
        if len(seen) == 2:  # read while the stage still runs
            assert not executing.done()
            gate.set()
    assert seen == ["a", {"b": 2}, "c"]
    assert (await asyncio.wait_for(executing, 10)).outcome == "completed"
    stored = await items(env, run_id, "tokens")
    assert [(i.offset, i.stage_id, i.attempt) for i in stored] == [
        (0, "s", 1),
        (1, "s", 1),
        (2, "s", 1),
    ]
    assert [i.value for i in await items(env, run_id, "tokens", offset=2)] == ["c"]


async def test_a_retried_attempts_items_stay_and_its_close_is_undone_by_its_failure(
    backend: Adapters,
) -> None:
    async def flaky(ctx: StageContext) -> int:
        await ctx.write_stream("log", f"try {ctx.attempt}")
        ctx.close_stream("log")  # written with the outcome: the failure closes nothing
        if ctx.attempt == 1:
            raise ConnectionError("once")
        return ctx.attempt

    retry = RetryPolicy(max_attempts=2, initial_backoff=1)
    env = make_env(backend, [one_stage("flaky", flaky, retry=retry)])
    run = await env.run("flaky")
    assert run.status.value == "COMPLETED", run.error
    got = [(i.offset, i.value, i.attempt) for i in await items(env, run.run_id, "log")]
    assert got == [(0, "try 1", 1), (1, "try 2", 2)]
    async with backend.persistence.transaction() as tx:
        tail = await tx.streams.tail(run.run_id, "log")
    assert tail is not None and (tail.offset, tail.closed, tail.attempt) == (2, True, 2)
    assert await items(env, run.run_id, "never-written") == []  # ends with the run


async def test_a_stream_never_closed_ends_with_its_run(backend: Adapters) -> None:
    async def chatty(ctx: StageContext) -> None:
        await ctx.write_stream("log", "hi")

    env = make_env(backend, [one_stage("chatty", chatty)])
    run = await env.run("chatty")
    assert [i.value for i in await items(env, run.run_id, "log")] == ["hi"]


async def test_a_rerun_stage_writes_on_after_its_close(backend: Adapters) -> None:
    async def says(ctx: StageContext) -> int:
        await ctx.write_stream("log", f"try {ctx.attempt}")
        ctx.close_stream("log")
        return ctx.attempt

    env = make_env(backend, [one_stage("says", says)])
    run = await env.run("says")
    await env.kernel.dispatch(RunRerunFrom(run_id=run.run_id, stage_id="s"))
    await env.run_until_idle()
    assert (await env.get_run(run.run_id)).status.value == "COMPLETED"
    # The first close has items after it: a reader skips it and ends at the last.
    got = [(i.offset, i.value) for i in await items(env, run.run_id, "log")]
    assert got == [(0, "try 1"), (2, "try 2")]


async def test_a_reader_waiting_on_a_running_stage_ends_when_the_run_ends(
    backend: Adapters,
) -> None:
    gate = asyncio.Event()

    async def once(ctx: StageContext) -> None:
        await gate.wait()
        await ctx.write_stream("k", 1)

    env = make_env(backend, [one_stage("once", once)])
    run_id, executing = await start(env, "once")
    reading = asyncio.ensure_future(items(env, run_id, "k"))
    await asyncio.sleep(0.05)
    assert not reading.done()
    gate.set()
    assert [i.value for i in await asyncio.wait_for(reading, 10)] == [1]
    await executing


async def test_an_attempt_that_lost_its_stage_writes_nothing_and_is_told_to_stop(
    backend: Adapters,
) -> None:
    gate = asyncio.Event()
    refused: list[LeaseLost] = []

    async def slow(ctx: StageContext) -> int:
        if ctx.attempt == 1:
            await gate.wait()
            try:
                await ctx.write_stream("k", "late")
            except LeaseLost as exc:
                refused.append(exc)
                assert ctx.cancelled
        else:
            await ctx.write_stream("k", "on time")
        return ctx.attempt

    env = make_env(backend, [one_stage("slow", slow, retry=RetryPolicy(max_attempts=2))])
    run_id, executing = await start(env, "slow")
    await asyncio.sleep(0.05)
    env.clock.advance(env.kernel.settings.lease_seconds + 1)
    reaped = await env.kernel.dispatch(LeaseReapStale())
    assert reaped.retried == 1
    gate.set()
    with contextlib.suppress(LeaseLost):
        await asyncio.wait_for(executing, 10)
    assert len(refused) == 1
    await env.run_until_idle()
    assert [(i.value, i.attempt) for i in await items(env, run_id, "k")] == [("on time", 2)]


async def test_bad_writes_are_refused_and_write_nothing(backend: Adapters) -> None:
    said: list[str] = []

    async def writes(ctx: StageContext) -> None:
        for key, value in (("", 1), ("k", object()), ("k", float("nan")), ("k", "x" * 2000)):
            try:
                await ctx.write_stream(key, value)
            except InvalidInputError as exc:
                said.append(exc.message)
        await ctx.write_stream("k", "fits")
        ctx.close_stream("k")
        with pytest.raises(StreamClosedError):
            await ctx.write_stream("k", "after the close")
        said.append("closed")

    settings = KernelSettings(max_payload_bytes=1024)
    env = make_env(backend, [one_stage("bad", writes)], settings=settings)
    run = await env.run("bad")
    assert run.status.value == "COMPLETED", run.error
    assert len(said) == 5 and "1-200 characters" in said[0] and "1024-byte limit" in said[3]
    assert [i.value for i in await items(env, run.run_id, "k")] == ["fits"]
    with pytest.raises(RunNotFoundError):
        await items(env, "no-such-run", "k")
    with pytest.raises(ValueError, match="offset"):
        await items(env, run.run_id, "k", offset=-1)


async def test_another_processs_reader_is_woken_by_the_change_feed(backend: Adapters) -> None:
    """The reader's kernel is on a backend of its own (as another process would be) and
    polls once an hour on a clock nobody moves: only the feed's hint can wake it."""
    if backend.sql is None:
        pytest.skip("the in-memory backend has no other process")
    gate = asyncio.Event()

    async def talk(ctx: StageContext) -> str:
        await gate.wait()
        await ctx.write_stream("tokens", "hello")
        ctx.set_event("said", "hello")
        return "done"

    wf = one_stage("talk", talk)
    env = make_env(backend, [wf])
    async with extra_backends(backend, 1) as (other,):
        reader = other.kernel(WorkflowRegistry([wf]))
        run_id, executing = await start(env, "talk")
        first = reader.read_stream(run_id, "tokens", poll_interval=3600)
        reading = asyncio.ensure_future(anext(first))
        event = asyncio.ensure_future(
            reader.get_event(run_id, "said", timeout=None, poll_interval=3600)
        )
        ended = asyncio.ensure_future(reader.wait_for_run(run_id, poll_interval=3600))
        await asyncio.sleep(0.2)  # the watches are in place
        gate.set()
        assert (await asyncio.wait_for(reading, 20)).value == "hello"
        assert await asyncio.wait_for(event, 20) == "hello"
        assert (await asyncio.wait_for(ended, 20)).status.value == "COMPLETED"
        await first.aclose()
        await executing
