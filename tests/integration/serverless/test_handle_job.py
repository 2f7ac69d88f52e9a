"""`ServerlessHost.handle_job`: one delivery, whatever shape it comes in, gets one clear
result; duplicates and stale deliveries never run a completed stage again."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from stagewise import (
    JobMessage,
    RetryPolicy,
    RunCancel,
    RunStatus,
    StageContext,
    StageStatus,
)
from stagewise.testing import InMemoryJobQueue, InMemoryPersistence
from stagewise_serverless import ServerlessSettings, encode_job_message

from ._support import Deployment, FlakyPersistence, single
from .conftest import MakeDeployment


async def settle() -> None:
    """Let every ready task run (heartbeats, a host running in the background)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def queued(d: Deployment) -> list[JobMessage]:
    assert isinstance(d.transport, InMemoryJobQueue)
    return d.transport.jobs()


async def started(d: Deployment, workflow_id: str = "single", input: Any = None) -> str:
    """Create a run and start it: its first job is on the queue."""
    run_id = await d.create_run(workflow_id, input)
    await d.host().run_maintenance_tick()
    return run_id


# --- message shapes ------------------------------------------------------------------------


async def test_a_job_body_is_accepted_as_json_text_bytes_a_dict_or_a_job_message(
    deploy: MakeDeployment,
) -> None:
    d = deploy([single()])
    shapes: list[Any] = []
    for make in (encode_job_message, lambda j: encode_job_message(j).encode(), JobMessage.to_json):
        await started(d)
        shapes.append(make((await queued(d))[-1]))
    await started(d)
    shapes.append((await queued(d))[-1])

    results = [await d.host().handle_job(shape) for shape in shapes]

    assert [r.outcome for r in results] == ["completed"] * 4
    assert not any(r.redeliver for r in results)


async def test_a_hand_written_message_needs_only_the_ids_and_the_attempt(
    deploy: MakeDeployment,
) -> None:
    d = deploy([single()])
    run_id = await started(d)
    [job] = await queued(d)
    body = {k: v for k, v in job.to_json().items() if k not in ("available_at", "priority")}

    result = await d.host().handle_job(json.dumps(body))

    assert result.outcome == "completed"
    assert (result.run_id, result.stage_id, result.attempt) == (run_id, "only", 1)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ("[1, 2]", "must be a JSON object, not list"),
        (None, "must be a JSON object, not NoneType"),
        (42, "must be a JSON object, not int"),
        ("{}", "job_id must be a non-empty string"),
        ({"job_id": "j", "run_id": "r", "workflow_id": "w", "stage_id": "s"}, "attempt must be"),
        (
            {"job_id": "j", "run_id": "r", "workflow_id": "w", "stage_id": "s", "attempt": "1"},
            "attempt must be a positive integer",
        ),
        (
            {"job_id": "j", "run_id": "r", "workflow_id": "w", "stage_id": "s", "attempt": True},
            "attempt must be a positive integer",
        ),
        (
            {"job_id": "j", "run_id": "r", "workflow_id": "w", "stage_id": "", "attempt": 1},
            "stage_id must be a non-empty string",
        ),
        (
            {
                "job_id": "j",
                "run_id": "r",
                "workflow_id": "w",
                "stage_id": "s",
                "attempt": 1,
                "available_at": "2026-01-01T00:00:00",
            },
            "available_at must carry a timezone",
        ),
        (
            {
                "job_id": "j",
                "run_id": "r",
                "workflow_id": "w",
                "stage_id": "s",
                "attempt": 1,
                "available_at": "yesterday",
            },
            "is not an ISO 8601 timestamp",
        ),
    ],
)
async def test_a_malformed_message_is_a_clear_failure_that_is_not_redelivered(
    deploy: MakeDeployment, body: Any, reason: str
) -> None:
    d = deploy([single()])

    result = await d.host().handle_job(body)

    assert result.outcome == "failed"
    assert result.error is not None and reason in result.error
    assert result.redeliver is False  # no delivery can ever parse it


async def test_an_unknown_workflow_or_stage_fails_clearly_and_goes_back_to_the_queue(
    deploy: MakeDeployment,
) -> None:
    d = deploy([single()])
    await started(d)
    [job] = await queued(d)

    unknown_workflow = await d.host().handle_job({**job.to_json(), "workflow_id": "gone"})
    unknown_stage = await d.host().handle_job({**job.to_json(), "stage_id": "gone"})

    assert unknown_workflow.outcome == "failed"
    assert (
        unknown_workflow.error == "workflow 'gone' is not registered; registered workflows: single"
    )
    assert unknown_stage.outcome == "failed"
    assert unknown_stage.error == "workflow 'single' has no stage 'gone'"
    # A deployment that is behind may not know a workflow a newer one enqueued: another
    # container may, and the queue's dead-letter policy ends it otherwise.
    assert unknown_workflow.redeliver and unknown_stage.redeliver


async def test_a_message_for_a_run_that_does_not_exist_is_a_stale_delivery(
    deploy: MakeDeployment,
) -> None:
    d = deploy([single()])
    await started(d)
    [job] = await queued(d)

    result = await d.host().handle_job({**job.to_json(), "run_id": "no-such-run"})

    assert result.outcome == "lease_lost"
    assert result.error is not None and "does not exist" in result.error
    assert result.redeliver is False


# --- outcomes ------------------------------------------------------------------------------


async def test_a_cancelled_run_gives_cancelled_and_runs_nothing(deploy: MakeDeployment) -> None:
    calls = Counter[str]()

    async def work(ctx: StageContext) -> int:
        calls["only"] += 1
        return 1

    d = deploy([single(execute=work)])
    run_id = await started(d)
    [job] = await queued(d)
    await d.kernel().dispatch(RunCancel(run_id=run_id, reason="user asked"))

    result = await d.host().handle_job(encode_job_message(job))

    assert result.outcome == "cancelled"
    assert result.error == "the run was cancelled"
    assert result.redeliver is False
    assert calls["only"] == 0
    assert (await d.get_run(run_id)).status is RunStatus.CANCELLED


async def test_a_stage_that_fails_for_good_is_failed_and_done_with(
    deploy: MakeDeployment,
) -> None:
    async def boom(ctx: StageContext) -> None:
        raise RuntimeError("the model exploded")

    d = deploy([single(execute=boom, retry=RetryPolicy(max_attempts=1))])
    run_id = await started(d)
    [job] = await queued(d)

    result = await d.host().handle_job(encode_job_message(job))

    assert result.outcome == "failed"
    assert result.error == "the model exploded"
    assert result.redeliver is False
    assert (await d.get_run(run_id)).status is RunStatus.FAILED


async def test_a_failed_attempt_with_attempts_left_is_retried_by_the_kernel_not_the_queue(
    deploy: MakeDeployment,
) -> None:
    async def flaky(ctx: StageContext) -> dict[str, int]:
        if ctx.attempt == 1:
            raise ConnectionError("upstream 503")
        return {"attempt": ctx.attempt}

    d = deploy([single(execute=flaky, retry=RetryPolicy(initial_backoff=10, jitter=0))])
    run_id = await started(d)
    [first] = await queued(d)

    result = await d.host().handle_job(encode_job_message(first))

    assert result.outcome == "retry"
    assert result.error == "upstream 503"
    assert result.retry_after == 10
    assert result.redeliver is False  # attempt 2 is a new job, already enqueued
    [second] = await queued(d)
    assert second.attempt == 2
    assert second.available_at == d.clock.now() + timedelta(seconds=10)
    d.clock.advance(10)
    assert (await d.host().handle_job(encode_job_message(second))).outcome == "completed"
    assert (await d.get_run(run_id)).output == {"attempt": 2}


# --- deliveries that come back -------------------------------------------------------------


async def test_a_transient_error_writes_nothing_and_asks_for_the_delivery_again() -> None:
    flaky = FlakyPersistence(InMemoryPersistence())
    d = Deployment([single()], persistence=flaky, external=True)
    try:
        run_id = await started(d)
        [job] = await queued(d)
        flaky.down_runs.add(run_id)

        result = await d.host().handle_job(encode_job_message(job))

        assert result.outcome == "retry"
        assert result.redeliver is True
        lost = "connection to the database was lost (runs.load)"
        assert result.error == f"TransientError: {lost}"
        flaky.down_runs.clear()
        assert (await d.stages(run_id))["only"].status is StageStatus.PENDING
        assert (await d.host().handle_job(encode_job_message(job))).outcome == "completed"
    finally:
        await d.aclose()


async def test_a_delivery_before_its_attempt_is_due_comes_back_later(
    deploy: MakeDeployment,
) -> None:
    async def flaky(ctx: StageContext) -> int:
        if ctx.attempt == 1:
            raise ConnectionError("rate limited")
        return ctx.attempt

    policy = RetryPolicy(initial_backoff=3600, max_backoff=3600, jitter=0)
    d = deploy([single(execute=flaky, retry=policy)], sqs=True)
    await started(d)
    assert d.sqs is not None
    first = d.sqs.receive()
    await d.host().handle_job(first["Records"][0]["body"])  # attempt 1 fails
    d.sqs.settle(first, {"batchItemFailures": []})
    # SQS delays a message 15 minutes at most: attempt 2 arrives 45 minutes early.
    d.clock.advance(900)
    [record] = d.sqs.receive()["Records"]

    early = await d.host().handle_job(record["body"])
    d.clock.advance(2700)
    due = await d.host().handle_job(record["body"])

    assert early.outcome == "retry"
    assert early.error is None
    assert early.retry_after == 2700
    assert early.redeliver is True
    assert due.outcome == "completed"


async def test_a_job_that_cannot_finish_before_the_deadline_is_not_started(
    deploy: MakeDeployment,
) -> None:
    calls = Counter[str]()

    async def work(ctx: StageContext) -> int:
        calls["only"] += 1
        return 1

    d = deploy([single(execute=work), single("quick", execute=work, timeout=2)])
    await started(d)
    await started(d, "quick")
    slow_job, quick_job = await queued(d)
    deadline = d.clock.now() + timedelta(seconds=10)

    slow = await d.host().handle_job(encode_job_message(slow_job), deadline=deadline)
    quick = await d.host().handle_job(encode_job_message(quick_job), deadline=deadline)

    # No timeout: it may need job_time_budget (30 s), and 10 - 5 (safety margin) are left.
    assert slow.outcome == "retry"
    assert slow.error == "not started: it may need 30s and 5s are left"
    assert slow.redeliver is True
    assert quick.outcome == "completed"  # its timeout (2 s) fits
    assert calls["only"] == 1


# --- heartbeats ----------------------------------------------------------------------------


@pytest.mark.parametrize("heartbeats", [True, False])
async def test_heartbeats_keep_a_long_stage_from_being_reaped_by_a_concurrent_tick(
    deploy: MakeDeployment, heartbeats: bool
) -> None:
    ticks: list[int] = []

    async def long(ctx: StageContext) -> str:
        for _ in range(9):  # 90 s on a 30 s lease
            d.clock.advance(10)
            await settle()
        tick = await d.host().run_maintenance_tick()  # another container's schedule
        ticks.append(tick.leases_released)
        return "done"

    d = deploy([single(execute=long)], settings=ServerlessSettings(heartbeats=heartbeats))
    run_id = await started(d)
    [job] = await queued(d)

    result = await d.host().handle_job(encode_job_message(job))

    if heartbeats:
        assert (result.outcome, ticks) == ("completed", [0])
        assert (await d.get_run(run_id)).output == "done"
    else:
        assert (result.outcome, ticks) == ("lease_lost", [1])
        assert (await d.stages(run_id))["only"].status is StageStatus.RETRYING
