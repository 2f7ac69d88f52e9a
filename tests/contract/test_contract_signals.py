"""Signals, on memory, SQLite and PostgreSQL: a durable mailbox per run, each signal consumed
by exactly one wait, first sent first taken per topic; refusals write nothing; a signal and
its wait's timeout never both win.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from stagewise import (
    InvalidInputError,
    JobExecute,
    RunClaimPending,
    RunNotActiveError,
    RunNotFoundError,
    RunSignal,
    RunStatus,
    StagePollSuspended,
    StageStatus,
    WorkflowBuilder,
    WorkflowDefinitionError,
    define_signal_stage,
    define_sleep_stage,
    define_stage,
)
from stagewise.testing import SequentialIds, TestEnvironment
from tests.conftest import Adapters, extra_backends
from tests.contract.test_kernel_scenarios import make_env

DAY = timedelta(days=1)


class Approval(BaseModel):
    approved: bool
    by: str


def approval_flow(**wait: Any) -> Any:
    return (
        WorkflowBuilder("approve")
        .pipe(define_stage(id="ask", execute=lambda ctx: {"asked": ctx.run_input["n"]}))
        .pipe(define_signal_stage(id="approval", topic="approval", payload=Approval, **wait))
        .pipe(
            define_stage(
                id="act",
                execute=lambda ctx: None if ctx.input is None else ctx.input["by"],
            )
        )
        .build()
    )


async def until_waiting(env: TestEnvironment, run_id: str, stage_id: str = "approval") -> None:
    """Drive the run by hand until `stage_id` waits (SUSPENDED)."""
    await env.kernel.dispatch(RunClaimPending())
    for _ in range(10):
        stages = await env.stages(run_id)
        if stage_id in stages and stages[stage_id].status is StageStatus.SUSPENDED:
            return
        for job in await env.queue.dequeue(worker_id="w", limit=5, lease_for=30):
            await env.kernel.dispatch(JobExecute(job=job, worker_id="w"))
    raise AssertionError(f"{stage_id} never waited: {await env.stages(run_id)}")


async def signal(env: TestEnvironment, run_id: str, payload: Any, **kw: Any) -> Any:
    return await env.kernel.dispatch(
        RunSignal(run_id=run_id, topic=kw.pop("topic", "approval"), payload=payload, **kw)
    )


async def test_a_waiting_stage_takes_the_signal_and_the_run_goes_on(backend: Adapters) -> None:
    env = make_env(backend, [approval_flow()])
    run_id = await env.create_run("approve", {"n": 1})
    await until_waiting(env, run_id)
    sent = await signal(env, run_id, {"approved": True, "by": "ada"})
    assert sent.consumed_by == "approval" and not sent.duplicate
    await env.run_until_idle()
    run = await env.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, "ada")
    stages = await env.stages(run_id)
    assert stages["approval"].output == {"approved": True, "by": "ada"}
    assert "run.signalled" in env.sink.types(run_id)
    (waiting,) = [e for e in env.sink.of_run(run_id) if e.type == "stage.waiting"]
    assert (waiting.wait, waiting.topic) == ("signal", "approval")


async def test_a_signal_sent_before_the_wait_is_kept_and_taken_when_it_begins(
    backend: Adapters,
) -> None:
    env = make_env(backend, [approval_flow()])
    run_id = await env.create_run("approve", {"n": 2})
    early = await signal(env, run_id, {"approved": False, "by": "bob"})  # still PENDING
    assert early.consumed_by is None
    await env.run_until_idle()
    run = await env.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, "bob")
    async with env.persistence.transaction() as tx:
        (kept,) = await tx.signals.for_run(run_id)
    assert (kept.seq, kept.consumed_by) == (1, "approval")
    assert "stage.waiting" not in env.sink.types(run_id)  # it never had to wait


async def test_signals_on_a_topic_are_taken_first_sent_first_one_per_wait(
    backend: Adapters,
) -> None:
    wf = (
        WorkflowBuilder("twice")
        .pipe(define_signal_stage(id="first", topic="step"))
        .pipe(define_signal_stage(id="second", topic="step"))
        .pipe(define_stage(id="both", execute=lambda ctx: [ctx.require("first"), ctx.input]))
        .build()
    )
    env = make_env(backend, [wf])
    run_id = await env.create_run("twice")
    for n in (1, 2, 3):
        await signal(env, run_id, n, topic="step")
    await env.run_until_idle()
    run = await env.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, [1, 2])
    async with env.persistence.transaction() as tx:
        rows = await tx.signals.for_run(run_id)
        left = await tx.signals.pending(run_id, "step")
    assert [(s.payload, s.consumed_by) for s in rows] == [(1, "first"), (2, "second"), (3, None)]
    assert [s.payload for s in left] == [3]


async def test_the_same_idempotency_key_stores_one_signal(backend: Adapters) -> None:
    env = make_env(backend, [approval_flow()])
    run_id = await env.create_run("approve", {"n": 3})
    first = await signal(env, run_id, {"approved": True, "by": "x"}, idempotency_key="k")
    again = await signal(env, run_id, {"approved": True, "by": "x"}, idempotency_key="k")
    assert again.duplicate and again.signal_id == first.signal_id
    async with env.persistence.transaction() as tx:
        assert len(await tx.signals.for_run(run_id)) == 1


async def test_refusals_write_nothing(backend: Adapters) -> None:
    env = make_env(backend, [approval_flow()])
    with pytest.raises(RunNotFoundError):
        await signal(env, "no-such-run", {"approved": True, "by": "x"})
    run_id = await env.create_run("approve", {"n": 4})
    await until_waiting(env, run_id)
    before = await env.get_run(run_id)
    with pytest.raises(InvalidInputError, match="does not match what stage 'approval'"):
        await signal(env, run_id, {"approved": "perhaps"})
    assert (await env.get_run(run_id)).version == before.version
    async with env.persistence.transaction() as tx:
        assert await tx.signals.for_run(run_id) == []
    await signal(env, run_id, {"approved": True, "by": "z"})
    await env.run_until_idle()
    assert (await env.get_run(run_id)).status is RunStatus.COMPLETED
    with pytest.raises(RunNotActiveError, match="COMPLETED: it takes no signals"):
        await signal(env, run_id, {"approved": True, "by": "late"})
    async with env.persistence.transaction() as tx:
        assert len(await tx.signals.for_run(run_id)) == 1


async def test_a_buffered_signal_that_does_not_match_fails_the_stage_clearly(
    backend: Adapters,
) -> None:
    env = make_env(backend, [approval_flow()])
    run_id = await env.create_run("approve", {"n": 5})
    await signal(env, run_id, {"approved": "maybe"})  # nobody waits yet: nothing checks it
    await env.run_until_idle()
    run = await env.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.type == "InvalidInputError"
    assert "sent before stage 'approval' waited" in run.error.message


async def test_a_timeout_fails_the_stage_or_continues_with_none(backend: Adapters) -> None:
    env = make_env(backend, [approval_flow(timeout=DAY)])
    run_id = await env.create_run("approve", {"n": 6})
    start = env.clock.now()
    await env.run_until_idle()
    run = await env.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.type == "SignalTimeoutError"
    assert run.finished_at == start + DAY

    env = make_env(
        backend, [approval_flow(timeout=DAY, on_timeout="continue")], ids=SequentialIds("b")
    )
    run_id = await env.create_run("approve", {"n": 7})
    await env.run_until_idle()
    run = await env.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, None)


async def test_a_three_day_sleep_then_a_two_day_signal_timeout_takes_no_time(
    backend: Adapters,
) -> None:
    wf = (
        WorkflowBuilder("slow-approval")
        .pipe(define_sleep_stage(id="cool-off", duration=3 * DAY))
        .pipe(define_signal_stage(id="ok", topic="ok", timeout=2 * DAY, on_timeout="continue"))
        .pipe(define_stage(id="decide", execute=lambda ctx: "auto" if ctx.input is None else "ok"))
        .build()
    )
    env = make_env(backend, [wf])
    start = env.clock.now()
    loop = asyncio.get_running_loop()
    began = loop.time()
    run = await env.run("slow-approval")
    assert (run.status, run.output) == (RunStatus.COMPLETED, "auto")
    assert env.clock.now() - start == 5 * DAY
    assert loop.time() - began < 30  # (fake time: no waiting; generous for slow machines)


async def test_a_signal_and_its_timeout_never_both_win(backend: Adapters) -> None:
    # The timeout's poll is taken (the stage held by the poll's token) and the signal comes
    # before the poll records its verdict, and the other way round: one winner each time.
    for signal_first in (True, False):
        flow = [approval_flow(timeout=60, on_timeout="continue")]
        env = make_env(backend, flow, ids=SequentialIds(f"r{signal_first}"))
        run_id = await env.create_run("approve", {"n": 8})
        await until_waiting(env, run_id)
        env.clock.advance(60)
        if signal_first:
            sent = await signal(env, run_id, {"approved": True, "by": "just-in-time"})
            assert sent.consumed_by == "approval"
            polled = await env.kernel.dispatch(StagePollSuspended(poller_id="p"))
            assert polled.resumed == 0
        else:
            polled = await env.kernel.dispatch(StagePollSuspended(poller_id="p"))
            assert polled.resumed == 1
            sent = await signal(env, run_id, {"approved": True, "by": "too-late"})
            assert sent.consumed_by is None
        await env.run_until_idle()
        run = await env.get_run(run_id)
        assert run.output == ("just-in-time" if signal_first else None)
        completed = [e for e in env.sink.of_run(run_id) if e.type == "stage.completed"]
        assert [getattr(e, "stage_id", None) for e in completed].count("approval") == 1


async def test_concurrent_signals_and_polls_leave_one_winner(sql_backend: Adapters) -> None:
    # On real databases, from several connections at once: signals (different keys) and
    # timeout polls race for one wait; exactly one signal is consumed, or the timeout wins
    # and every signal stays in the mailbox.
    env = make_env(sql_backend, [approval_flow(timeout=60, on_timeout="continue")])
    run_id = await env.create_run("approve", {"n": 9})
    await until_waiting(env, run_id)
    env.clock.advance(60)
    async with extra_backends(sql_backend, 4) as others:
        kernels = [
            make_env(
                Adapters(
                    name=sql_backend.name,
                    persistence=b.persistence,
                    job_transport=b.job_transport,
                    blob_store=b.blob_store,
                    clock=sql_backend.clock,
                ),
                [approval_flow(timeout=60, on_timeout="continue")],
                ids=SequentialIds(f"k{i}"),
            ).kernel
            for i, b in enumerate(others)
        ]
        calls: list[Any] = []
        for i, kernel in enumerate(kernels):
            if i % 2:
                calls.append(kernel.dispatch(StagePollSuspended(poller_id=f"p{i}")))
            else:
                payload = {"approved": True, "by": f"s{i}"}
                command = RunSignal(run_id=run_id, topic="approval", payload=payload)
                calls.append(kernel.dispatch(command))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for kernel in kernels:
            await kernel.aclose()
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert not refused, refused  # a signal that lost is kept in the mailbox, not refused
    await env.run_until_idle()
    run = await env.get_run(run_id)
    async with env.persistence.transaction() as tx:
        consumed = [s for s in await tx.signals.for_run(run_id) if s.consumed_by]
    assert run.status is RunStatus.COMPLETED
    if run.output is None:
        assert consumed == []  # the timeout won
    else:
        assert len(consumed) == 1 and run.output == consumed[0].payload["by"]


def test_a_signal_stage_is_defined_with_a_good_topic_and_timeout() -> None:
    with pytest.raises(WorkflowDefinitionError, match="topic"):
        define_signal_stage(id="s", topic="")
    with pytest.raises(WorkflowDefinitionError, match="on_timeout"):
        define_signal_stage(id="s", topic="t", on_timeout="ignore")
    with pytest.raises(WorkflowDefinitionError, match="must be positive"):
        define_signal_stage(id="s", topic="t", timeout=0)
    with pytest.raises(WorkflowDefinitionError, match="payload must be a pydantic model"):
        define_signal_stage(id="s", topic="t", payload=dict)  # type: ignore[arg-type]
    assert define_signal_stage(id="s", topic="t").kind == "signal"
