"""The proof, on the in-memory adapters, SQLite and PostgreSQL alike: a workflow with a
parallel group and an async-batch stage runs to completion through a sequence of fresh
hosts (one per simulated invocation), and a delivery that comes twice, or after its lease
expired and the attempt was retried elsewhere, never runs a completed stage again."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

from stagewise import (
    JobMessage,
    RetryPolicy,
    RunSignal,
    RunStatus,
    StageContext,
    StageStatus,
    WorkflowBuilder,
    define_signal_stage,
    define_sleep_stage,
    define_stage,
)
from stagewise_serverless import ServerlessSettings, encode_job_message
from tests.conftest import Adapters

from ._support import Deployment, drive_pull, drive_sqs, pipeline, single


def deployment(backend: Adapters, workflows: list[Any], **kwargs: Any) -> Deployment:
    """A deployment on the backend's storage; with `sqs=True` jobs travel through SQS."""
    transport = None if kwargs.get("sqs") else backend.job_transport
    return Deployment(
        workflows,
        clock=backend.clock,
        persistence=backend.persistence,
        transport=transport,
        blobs=backend.blob_store,
        **kwargs,
    )


async def take(d: Deployment, limit: int = 10) -> list[JobMessage]:
    """What the platform does before an invocation: take job messages off the queue."""
    return await d.transport.dequeue(worker_id="platform", limit=limit, lease_for=30)


async def test_a_run_completes_through_fresh_hosts_pulling_from_the_job_queue(
    backend: Adapters,
) -> None:
    p = pipeline()
    d = deployment(backend, [p.workflow])
    try:
        run_id = await d.create_run("pipeline", {"n": 1})

        invocations = await drive_pull(d, run_id)

        run = await d.get_run(run_id)
        assert run.status is RunStatus.COMPLETED
        assert run.output == {"n": 106}  # prepare: 2; left: 4, batch: 102; join: 106
        stages = await d.stages(run_id)
        assert {s.status for s in stages.values()} == {StageStatus.COMPLETED}
        assert {s.attempt for s in stages.values()} == {1}
        assert p.executed == {"prepare": 1, "left": 1, "batch": 1, "join": 1}
        assert p.checks[run_id] == 2
        assert len(d.kernels) >= invocations > 4  # a kernel and a host per invocation
        await d.host().run_maintenance_tick()  # the next scheduled tick flushes the outbox
        assert d.sink.types(run_id)[-1] == "run.completed"
    finally:
        await d.aclose()


async def test_a_run_completes_through_lambda_invocations_fed_by_sqs(backend: Adapters) -> None:
    p = pipeline()
    d = deployment(backend, [p.workflow], sqs=True)
    assert d.sqs is not None
    try:
        run_id = await d.create_run("pipeline", {"n": 1})

        await drive_sqs(d, run_id)

        run = await d.get_run(run_id)
        assert run.status is RunStatus.COMPLETED
        assert run.output == {"n": 106}
        assert p.executed == {"prepare": 1, "left": 1, "batch": 1, "join": 1}
        assert len(d.sqs) == 0  # every message was deleted
        assert len(d.sqs.sent) == 4  # one message per stage: nothing was sent twice
    finally:
        await d.aclose()


async def test_a_completion_advances_the_run_within_the_same_invocation(
    backend: Adapters,
) -> None:
    p = pipeline()
    d = deployment(backend, [p.workflow], sqs=True)
    assert d.sqs is not None
    try:
        run_id = await d.create_run("pipeline", {"n": 1})
        await d.host().run_maintenance_tick()  # claims the run: prepare's job is sent
        [body] = d.sqs.bodies()

        result = await d.host().handle_job(body)

        assert (result.outcome, result.redeliver) == ("completed", False)
        stages = await d.stages(run_id)
        assert stages["prepare"].status is StageStatus.COMPLETED
        assert {stages["left"].status, stages["batch"].status} == {StageStatus.PENDING}
        assert len(d.sqs) == 3  # left and batch were sent: no tick was needed
    finally:
        await d.aclose()


class Gate:
    """A stage that blocks its first attempt until released, and counts what ran."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.calls: Counter[int] = Counter()

    async def __call__(self, ctx: StageContext) -> dict[str, int]:
        self.calls[ctx.attempt] += 1
        if ctx.attempt == 1:
            self.entered.set()
            await self.release.wait()
        return {"attempt": ctx.attempt}

    async def running(self) -> None:
        """Wait until attempt 1 runs (its start has committed)."""
        await asyncio.wait_for(self.entered.wait(), timeout=10)


async def test_the_same_message_delivered_twice_runs_the_stage_once(backend: Adapters) -> None:
    gate = Gate()
    d = deployment(backend, [single(execute=gate)])
    try:
        run_id = await d.create_run("single")
        await d.host().run_maintenance_tick()
        [job] = await take(d)
        body = encode_job_message(job)

        first = asyncio.ensure_future(d.host().handle_job(body))
        await gate.running()
        # The queue's visibility timeout ran out while the first invocation still works.
        while_running = await d.host().handle_job(body)
        gate.release.set()
        done = await first
        after_completion = await d.host().handle_job(body)

        assert (while_running.outcome, while_running.redeliver) == ("lease_lost", False)
        assert (done.outcome, done.replayed) == ("completed", False)
        assert (after_completion.outcome, after_completion.replayed) == ("completed", True)
        assert after_completion.redeliver is False
        assert gate.calls == {1: 1}
        assert (await d.get_run(run_id)).output == {"attempt": 1}
    finally:
        await d.aclose()


async def test_a_delivery_whose_lease_expired_and_was_retried_elsewhere_changes_nothing(
    backend: Adapters,
) -> None:
    gate = Gate()
    d = deployment(
        backend,
        [single(execute=gate, retry=RetryPolicy(initial_backoff=1, jitter=0))],
        settings=ServerlessSettings(heartbeats=False),  # a frozen container sends none
    )
    try:
        run_id = await d.create_run("single")
        await d.host().run_maintenance_tick()
        [first_job] = await take(d)

        frozen = asyncio.ensure_future(d.host().handle_job(encode_job_message(first_job)))
        await gate.running()
        d.clock.advance(31)  # past the 30 s lease
        tick = await d.host().run_maintenance_tick()
        assert tick.leases_released == 1
        d.clock.advance(1)
        delivered = await take(d)  # attempt 2, and maybe attempt 1's message once more
        [second_job] = [j for j in delivered if j.attempt == 2]
        retried_elsewhere = await d.host().handle_job(encode_job_message(second_job))
        redelivered = [await d.host().handle_job(j) for j in delivered if j.attempt == 1]
        gate.release.set()
        late = await frozen
        first_again = await d.host().handle_job(encode_job_message(first_job))
        second_again = await d.host().handle_job(encode_job_message(second_job))

        assert retried_elsewhere.outcome == "completed"
        assert late.outcome == "lease_lost"  # its result was refused: nothing written
        assert late.error is not None and "lost its lease" in late.error
        for again in (first_again, second_again, *redelivered):
            assert (again.outcome, again.replayed, again.redeliver) == ("completed", True, False)
        assert gate.calls == {1: 1, 2: 1}
        stage = (await d.stages(run_id))["only"]
        assert (stage.status, stage.attempt, stage.output) == (
            StageStatus.COMPLETED,
            2,
            {"attempt": 2},
        )
    finally:
        await d.aclose()


async def test_a_sleeping_run_takes_no_invocation_and_a_tick_wakes_it(backend: Adapters) -> None:
    # A week's sleep between two stages: the invocation that runs the sleep's job ends at
    # once (the run holds nothing while it sleeps), each tick says when to wake, and the
    # first tick at or after that moment resumes it.
    wf = (
        WorkflowBuilder("nap")
        .pipe(define_stage(id="before", execute=lambda ctx: {"n": ctx.run_input["n"]}))
        .pipe(define_sleep_stage(id="week", duration=timedelta(days=7)))
        .pipe(define_stage(id="after", execute=lambda ctx: ctx.input["n"] + 1))
        .build()
    )
    d = deployment(backend, [wf])
    try:
        run_id = await d.create_run("nap", {"n": 1})
        await d.host().run_maintenance_tick()
        assert (await d.host().process_available_jobs(max_jobs=10)).succeeded == 2
        wake = (await d.stages(run_id))["week"].due_at
        assert wake == d.clock.now() + timedelta(days=7)
        assert (await d.host().process_available_jobs()).succeeded == 0  # nothing to run

        d.clock.advance(timedelta(days=6).total_seconds())
        tick = await d.host().run_maintenance_tick()
        assert (tick.suspended_checked, tick.next_wake_at) == (0, wake)

        d.clock.advance(timedelta(days=1).total_seconds())
        tick = await d.host().run_maintenance_tick()
        assert (tick.suspended_checked, tick.resumed, tick.next_wake_at) == (1, 1, None)
        assert (await d.host().process_available_jobs()).succeeded == 1
        run = await d.get_run(run_id)
        assert (run.status, run.output) == (RunStatus.COMPLETED, 2)
    finally:
        await d.aclose()


async def test_a_tick_fails_a_run_past_its_deadline(backend: Adapters) -> None:
    wf = (
        WorkflowBuilder("bounded", timeout=timedelta(hours=1))
        .pipe(define_sleep_stage(id="long", duration=timedelta(days=1)))
        .build()
    )
    d = deployment(backend, [wf])
    try:
        run_id = await d.create_run("bounded", {})
        await d.host().run_maintenance_tick()
        await d.host().process_available_jobs()
        d.clock.advance(3600)
        tick = await d.host().run_maintenance_tick()
        assert tick.timed_out == 1
        run = await d.get_run(run_id)
        assert run.status is RunStatus.FAILED
        assert run.error is not None and run.error.type == "DeadlineExceededError"
    finally:
        await d.aclose()


async def test_a_signal_wait_takes_no_invocation_and_the_signal_moves_the_run_on(
    backend: Adapters,
) -> None:
    wf = (
        WorkflowBuilder("gate")
        .pipe(define_signal_stage(id="ok", topic="ok", timeout=timedelta(hours=1)))
        .pipe(define_stage(id="after", execute=lambda ctx: ctx.input))
        .build()
    )
    d = deployment(backend, [wf])
    try:
        run_id = await d.create_run("gate", {})
        await d.host().run_maintenance_tick()
        assert (await d.host().process_available_jobs()).succeeded == 1  # it begins waiting
        assert (await d.host().process_available_jobs()).succeeded == 0  # nothing to run
        # An API handler (a function of its own) sends the signal through a kernel.
        sent = await d.kernel().dispatch(RunSignal(run_id=run_id, topic="ok", payload=42))
        assert sent.consumed_by == "ok"
        assert (await d.host().process_available_jobs()).succeeded == 1
        run = await d.get_run(run_id)
        assert (run.status, run.output) == (RunStatus.COMPLETED, 42)

        late = await d.create_run("gate", {})  # nobody signals this one: the tick times it out
        await d.host().run_maintenance_tick()
        await d.host().process_available_jobs()
        d.clock.advance(3600)
        tick = await d.host().run_maintenance_tick()
        assert (tick.suspended_checked, tick.resumed) == (1, 0)
        failed = await d.get_run(late)
        assert failed.error is not None and failed.error.type == "SignalTimeoutError"
    finally:
        await d.aclose()


async def test_a_stage_streams_and_publishes_from_one_invocation_to_a_reader_elsewhere(
    backend: Adapters,
) -> None:
    async def talk(ctx: StageContext) -> str:
        for word in ("from", "a", "function"):
            await ctx.write_stream("words", word)
        ctx.close_stream("words")
        ctx.set_event("done", True)
        return "said"

    wf = WorkflowBuilder("talk").pipe(define_stage(id="say", execute=talk)).build()
    d = deployment(backend, [wf])
    try:
        run_id = await d.create_run("talk", {})
        await d.host().run_maintenance_tick()
        assert (await d.host().process_available_jobs()).succeeded == 1
        # A reader (an API handler of its own) follows what the invocation wrote.
        reader = d.kernel()
        words = [item.value async for item in reader.read_stream(run_id, "words")]
        assert words == ["from", "a", "function"]
        assert await reader.get_event(run_id, "done") is True
    finally:
        await d.aclose()
