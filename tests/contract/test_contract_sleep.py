"""Durable sleep and the run's input in every stage, on memory, SQLite and PostgreSQL.

A sleep is a SUSPENDED stage with its wake time on the row: no job queued, no slot held,
no user code polled; the kernel resumes it when due (the test driver jumps straight there),
with its input passed through as its output.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from stagewise import (
    JobExecute,
    RunCancel,
    RunClaimPending,
    RunStatus,
    StageContext,
    StagePollSuspended,
    StageStatus,
    WorkflowBuilder,
    WorkflowDefinitionError,
    define_sleep_stage,
    define_stage,
)
from stagewise.testing import SequentialIds, TestEnvironment
from tests.conftest import Adapters
from tests.contract.test_kernel_scenarios import make_env, queued_jobs

DAY = timedelta(days=1)


class Order(BaseModel):
    id: int
    remind_at: str | None = None


def reminder(sleep: Any) -> Any:
    return (
        WorkflowBuilder("remind", input=Order)
        .pipe(define_stage(id="place", execute=lambda ctx: {"placed": ctx.input["id"]}))
        .pipe(sleep)
        .pipe(
            define_stage(
                id="remind",
                execute=lambda ctx: {"order": ctx.run_input.id, "got": ctx.input},
            )
        )
        .build()
    )


async def drive_to_sleep(env: TestEnvironment, run_id: str) -> None:
    """Run `place` and the sleep's own job, by hand: the run then waits on its sleep."""
    await env.kernel.dispatch(RunClaimPending())
    for _ in range(2):
        (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
        await env.kernel.dispatch(JobExecute(job=job, worker_id="w"))


async def test_a_thirty_day_sleep_takes_no_time_and_passes_its_input_on(
    backend: Adapters,
) -> None:
    env = make_env(backend, [reminder(define_sleep_stage(id="wait", duration=30 * DAY))])
    run_id = await env.create_run("remind", {"id": 7})
    await env.run_until_idle()
    run = await env.get_run(run_id)
    assert run.status is RunStatus.COMPLETED
    # The sleep's output is its input (place's output); run_input reaches a later group.
    assert run.output == {"order": 7, "got": {"placed": 7}}
    stages = await env.stages(run_id)
    woke = stages["wait"].finished_at
    assert woke is not None and woke - stages["wait"].started_at == 30 * DAY  # type: ignore[operator]
    (waiting,) = [e for e in env.sink.of_run(run_id) if e.type == "stage.waiting"]
    assert (waiting.wait, waiting.topic, waiting.until) == ("sleep", None, woke)
    assert "stage.suspended" not in env.sink.types(run_id)  # that is for async-batch stages


async def test_a_sleeping_run_holds_no_job_and_polls_no_code_until_it_is_due(
    backend: Adapters,
) -> None:
    env = make_env(backend, [reminder(define_sleep_stage(id="wait", duration=DAY))])
    run_id = await env.create_run("remind", {"id": 1})
    await drive_to_sleep(env, run_id)
    stages = await env.stages(run_id)
    sleeping = stages["wait"]
    assert sleeping.status is StageStatus.SUSPENDED
    assert sleeping.due_at == sleeping.started_at + DAY  # type: ignore[operator]
    assert await queued_jobs(env) == 0
    # A wake-up hint for the moment it is due, for the host's timer.
    assert ("stage.pollSuspended", sleeping.due_at) in env.scheduler.hints
    env.clock.advance(DAY.total_seconds() - 1)
    polled = await env.kernel.dispatch(StagePollSuspended(poller_id="p"))
    assert polled.checked == 0  # not due: nothing is read beyond the due index
    env.clock.advance(1)
    polled = await env.kernel.dispatch(StagePollSuspended(poller_id="p"))
    assert (polled.checked, polled.resumed) == (1, 1)
    await env.run_until_idle()
    assert (await env.get_run(run_id)).status is RunStatus.COMPLETED


async def test_a_sleep_until_a_moment_from_the_run_input(backend: Adapters) -> None:
    def remind_at(ctx: StageContext) -> datetime:
        return datetime.fromisoformat(ctx.run_input.remind_at)

    env = make_env(backend, [reminder(define_sleep_stage(id="wait", until=remind_at))])
    at = env.clock.now() + timedelta(hours=5)
    run_id = await env.create_run("remind", {"id": 2, "remind_at": at.isoformat()})
    await env.run_until_idle()
    stages = await env.stages(run_id)
    assert stages["wait"].finished_at == at
    assert (await env.get_run(run_id)).status is RunStatus.COMPLETED


async def test_a_moment_already_past_completes_the_sleep_at_once(backend: Adapters) -> None:
    async def yesterday(ctx: StageContext) -> datetime:
        return ctx.now() - DAY

    env = make_env(backend, [reminder(define_sleep_stage(id="wait", until=yesterday))])
    run_id = await env.create_run("remind", {"id": 3})
    started = env.clock.now()
    await env.run_until_idle()
    assert (await env.get_run(run_id)).status is RunStatus.COMPLETED
    assert env.clock.now() == started
    assert "stage.waiting" not in env.sink.types(run_id)


@pytest.mark.parametrize(
    ("returned", "said"),
    [
        (datetime(2030, 1, 1), "naive datetime"),
        ("2030-01-01T00:00:00Z", "must return a datetime, not str"),
    ],
)
async def test_until_must_give_an_aware_datetime(
    backend: Adapters, returned: Any, said: str
) -> None:
    env = make_env(backend, [reminder(define_sleep_stage(id="wait", until=lambda ctx: returned))])
    run_id = await env.create_run("remind", {"id": 4})
    await env.run_until_idle()
    run = await env.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.type == "WorkflowDefinitionError"
    assert said in run.error.message
    stages = await env.stages(run_id)
    assert stages["wait"].attempt == 1  # a definition error is not retried


async def test_a_sleeping_run_can_be_cancelled(backend: Adapters) -> None:
    env = make_env(backend, [reminder(define_sleep_stage(id="wait", duration=DAY))])
    run_id = await env.create_run("remind", {"id": 5})
    await drive_to_sleep(env, run_id)
    await env.kernel.dispatch(RunCancel(run_id=run_id))
    env.clock.advance(2 * DAY.total_seconds())
    assert (await env.kernel.dispatch(StagePollSuspended(poller_id="p"))).checked == 0
    await env.run_until_idle()  # the events reach the sink
    assert (await env.get_run(run_id)).status is RunStatus.CANCELLED
    stages = await env.stages(run_id)
    assert stages["wait"].status is StageStatus.CANCELLED
    assert "stage.cancelled" in env.sink.types(run_id)


async def test_a_sleep_survives_a_new_process_and_wakes_once(backend: Adapters) -> None:
    sleep = define_sleep_stage(id="wait", duration=DAY)
    env = make_env(backend, [reminder(sleep)])
    run_id = await env.create_run("remind", {"id": 6})
    await drive_to_sleep(env, run_id)
    await env.kernel.aclose()  # the process ends while the run sleeps
    later = make_env(backend, [reminder(sleep)], ids=SequentialIds("second"))
    await later.run_until_idle()
    run = await later.get_run(run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"order": 6, "got": {"placed": 6}}
    woke = [
        e
        for e in later.sink.of_run(run_id)
        if e.type == "stage.completed" and getattr(e, "stage_id", None) == "wait"
    ]
    assert len(woke) == 1


async def test_a_sleep_beside_a_stage_of_code_in_one_group(backend: Adapters) -> None:
    wf = (
        WorkflowBuilder("side")
        .parallel(
            [
                define_sleep_stage(id="nap", duration=60),
                define_stage(id="work", execute=lambda ctx: ctx.run_input["n"] * 2),
            ]
        )
        .pipe(define_stage(id="join", execute=lambda ctx: ctx.input))
        .build()
    )
    env = make_env(backend, [wf])
    run = await env.run("side", {"n": 4})
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"nap": {"n": 4}, "work": 8}


def test_a_sleep_is_defined_with_exactly_one_length() -> None:
    with pytest.raises(WorkflowDefinitionError, match="exactly one of duration or until"):
        define_sleep_stage(id="s")
    with pytest.raises(WorkflowDefinitionError, match="exactly one of duration or until"):
        define_sleep_stage(id="s", duration=1, until=lambda ctx: datetime.now(UTC))
    with pytest.raises(WorkflowDefinitionError, match="must be positive"):
        define_sleep_stage(id="s", duration=timedelta(0))
    with pytest.raises(WorkflowDefinitionError, match="until must be callable"):
        define_sleep_stage(id="s", until=datetime.now(UTC))  # type: ignore[arg-type]


def test_a_sleep_is_its_own_kind_of_stage_in_the_version_fingerprint() -> None:
    code = WorkflowBuilder("v").pipe(define_stage(id="s", execute=lambda ctx: ctx.input)).build()
    nap = WorkflowBuilder("v").pipe(define_sleep_stage(id="s", duration=5)).build()
    assert code.version != nap.version
    assert nap.stage("s").kind == "sleep"
