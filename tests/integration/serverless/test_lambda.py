"""The AWS Lambda adapter, fed recorded event dictionaries: an SQS batch gives the partial
batch response, a scheduled event runs a maintenance tick, and the remaining time the
context reports is respected."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

from stagewise import (
    KernelSettings,
    RetryPolicy,
    RunCancel,
    RunStatus,
    StageContext,
    StageStatus,
)
from stagewise.testing import InMemoryPersistence
from stagewise_serverless import LambdaAdapter, ServerlessHost, ServerlessSettings
from tests.conftest import Adapters

from ._aws import SCHEDULED_EVENT, sqs_record
from ._support import Deployment, FlakyPersistence, single
from .conftest import MakeDeployment


def ids(response: dict[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


async def test_a_batch_of_ten_with_two_failing_stages_reports_exactly_those_two(
    backend: Adapters,
) -> None:
    calls = Counter[str]()

    async def work(ctx: StageContext) -> str:
        calls[ctx.run_id] += 1
        return "ok"

    flaky = FlakyPersistence(backend.persistence)
    d = Deployment(
        [single(execute=work)],
        clock=backend.clock,
        persistence=flaky,
        blobs=backend.blob_store,
        sqs=True,
    )
    assert d.sqs is not None
    try:
        runs = [await d.create_run("single") for _ in range(10)]
        await d.host().run_maintenance_tick()
        event = d.sqs.receive(10)
        assert len(event["Records"]) == 10
        by_run = {json.loads(r["body"])["run_id"]: r["messageId"] for r in event["Records"]}
        # The database drops the connection whenever these two stages are handled.
        failing = {runs[2], runs[7]}
        flaky.down_runs |= failing

        response = await d.lambda_adapter().handle_sqs_event(event, d.context())

        assert sorted(ids(response)) == sorted(by_run[r] for r in failing)
        for run_id in runs:
            status = (await d.stages(run_id))["only"].status
            expected = StageStatus.PENDING if run_id in failing else StageStatus.COMPLETED
            assert status is expected
        # SQS deletes the eight, and delivers the two again after the visibility timeout.
        d.sqs.settle(event, response)
        flaky.down_runs.clear()
        d.clock.advance(60)
        again = d.sqs.receive(10)
        assert sorted(r["messageId"] for r in again["Records"]) == sorted(ids(response))
        assert ids(await d.lambda_adapter().handle_sqs_event(again, d.context())) == []
        assert [(await d.get_run(r)).status for r in runs] == [RunStatus.COMPLETED] * 10
        assert calls == dict.fromkeys(runs, 1)
    finally:
        await d.aclose()


async def test_only_deliveries_that_were_not_processed_are_reported_as_failures() -> None:
    async def ok(ctx: StageContext) -> int:
        return 1

    async def broken(ctx: StageContext) -> None:
        raise ValueError("bad input row")

    async def flaky_stage(ctx: StageContext) -> None:
        raise ConnectionError("upstream 503")

    flaky = FlakyPersistence(InMemoryPersistence())
    d = Deployment(
        [
            single("ok", execute=ok),
            single("broken", execute=broken, retry=RetryPolicy(max_attempts=1)),
            single("retried", execute=flaky_stage, retry=RetryPolicy(initial_backoff=5)),
            single("cancelled", execute=ok),
            single("unreachable", execute=ok),
        ],
        persistence=flaky,
        sqs=True,
    )
    assert d.sqs is not None
    try:
        runs = {w: await d.create_run(w) for w in ("ok", "broken", "retried", "cancelled")}
        runs["unreachable"] = await d.create_run("unreachable")
        await d.host().run_maintenance_tick()
        await d.kernel().dispatch(RunCancel(run_id=runs["cancelled"]))
        flaky.down_runs.add(runs["unreachable"])
        event = d.sqs.receive(10)
        bodies = {json.loads(r["body"])["workflow_id"]: r["body"] for r in event["Records"]}
        records = {w: sqs_record(f"m-{w}", b) for w, b in bodies.items()}
        records["duplicate"] = sqs_record("m-duplicate", bodies["ok"])
        records["malformed"] = sqs_record("m-malformed", "{oops")
        unknown = json.loads(bodies["ok"]) | {"workflow_id": "renamed"}
        records["unknown-workflow"] = sqs_record("m-unknown-workflow", json.dumps(unknown))

        response = await d.lambda_adapter().handle_sqs_event(
            {"Records": list(records.values())}, d.context()
        )

        # Recorded or refused on purpose -> acknowledged. Not processed -> redelivered.
        assert sorted(ids(response)) == ["m-unknown-workflow", "m-unreachable"]
        assert (await d.get_run(runs["ok"])).status is RunStatus.COMPLETED
        assert (await d.get_run(runs["broken"])).status is RunStatus.FAILED
        assert (await d.stages(runs["retried"]))["only"].status is StageStatus.RETRYING
        assert len(d.sqs) == 6  # the five received, plus attempt 2 of "retried"
    finally:
        await d.aclose()


async def test_records_that_would_not_finish_in_the_remaining_time_are_not_started(
    deploy: MakeDeployment,
) -> None:
    calls = Counter[str]()

    async def slow(ctx: StageContext) -> int:
        calls[ctx.run_id] += 1
        d.clock.advance(40)
        return 1

    d = deploy([single(execute=slow)], sqs=True)
    assert d.sqs is not None
    runs = [await d.create_run("single") for _ in range(4)]
    await d.host().run_maintenance_tick()
    event = d.sqs.receive(10)

    # 100 s left: the first needs 30 + 5; at 60 s left the second fits; at 20 s none does.
    response = await d.lambda_adapter().handle_sqs_event(event, d.context(remaining_ms=100_000))

    assert ids(response) == [r["messageId"] for r in event["Records"][2:]]
    assert sum(calls.values()) == 2
    statuses = [(await d.stages(r))["only"].status for r in runs]
    assert statuses.count(StageStatus.PENDING) == 2


async def test_a_scheduled_event_runs_a_tick_and_reports_its_counts(
    deploy: MakeDeployment,
) -> None:
    d = deploy([single()], sqs=True)
    await d.create_run("single")

    response = await d.lambda_adapter().handle_maintenance_event(SCHEDULED_EVENT, d.context())

    assert response == {
        "maintenance": {
            "claimed": 1,
            "suspended_checked": 0,
            "resumed": 0,
            "leases_released": 0,
            "requeued": 0,
            "events_flushed": 2,
            "purged": 0,
            "timed_out": 0,
            "next_wake_at": None,
            "errors": [],
            "skipped": [],
        },
        "jobs": None,
    }
    assert json.loads(json.dumps(response)) == response
    assert d.sqs is not None and len(d.sqs) == 1


async def test_with_the_database_as_queue_a_scheduled_event_also_runs_jobs(
    deploy: MakeDeployment,
) -> None:
    d = deploy([single()], settings=ServerlessSettings(jobs_after_tick=10))
    run_id = await d.create_run("single")

    response = await d.lambda_adapter().handle_maintenance_event(SCHEDULED_EVENT, d.context())

    assert response["jobs"] == {
        "processed": 1,
        "succeeded": 1,
        "failed": 0,
        "retried": 0,
        "skipped": 0,
        "stopped_at_deadline": False,
    }
    assert (await d.get_run(run_id)).status is RunStatus.COMPLETED


async def test_scheduled_events_purge_runs_past_the_retention(deploy: MakeDeployment) -> None:
    d = deploy(
        [single()],
        settings=ServerlessSettings(jobs_after_tick=10),
        kernel_settings=KernelSettings(retention=60),
    )
    run_id = await d.create_run("single")
    await d.lambda_adapter().handle_maintenance_event(SCHEDULED_EVENT, d.context())
    assert (await d.get_run(run_id)).status is RunStatus.COMPLETED
    d.clock.advance(61)

    response = await d.lambda_adapter().handle_maintenance_event(SCHEDULED_EVENT, d.context())

    assert response["maintenance"]["purged"] == 1
    async with d.persistence.transaction() as tx:
        assert await tx.runs.get(run_id) is None


async def test_a_scheduled_event_with_little_time_left_skips_what_does_not_fit(
    deploy: MakeDeployment,
) -> None:
    d = deploy([single()], settings=ServerlessSettings(jobs_after_tick=10))
    await d.create_run("single")

    response = await d.lambda_adapter().handle_maintenance_event(
        SCHEDULED_EVENT, d.context(remaining_ms=3_000)
    )

    assert len(response["maintenance"]["skipped"]) == 4
    assert response["jobs"]["processed"] == 0
    assert response["jobs"]["stopped_at_deadline"] is True


async def test_the_host_is_built_once_per_container_and_again_after_a_failed_build(
    deploy: MakeDeployment,
) -> None:
    d = deploy([single()], sqs=True)
    builds: list[str] = []

    async def build() -> ServerlessHost:
        builds.append("build")
        if len(builds) == 1:
            raise ConnectionError("database not reachable yet")
        return d.host()

    app = LambdaAdapter(build)
    with pytest.raises(ConnectionError):
        await app.handle_maintenance_event(SCHEDULED_EVENT, d.context())
    await app.handle_maintenance_event(SCHEDULED_EVENT, d.context())
    await app.handle_sqs_event({"Records": []}, d.context())

    assert builds == ["build", "build"]


async def test_an_event_that_is_not_an_sqs_batch_is_refused(deploy: MakeDeployment) -> None:
    d = deploy([single()], sqs=True)
    with pytest.raises(ValueError, match="not an SQS event"):
        await d.lambda_adapter().handle_sqs_event(SCHEDULED_EVENT, d.context())


def test_the_synchronous_handlers_share_one_event_loop_per_container() -> None:
    d = Deployment([single()], sqs=True)
    assert d.sqs is not None
    loops: list[asyncio.AbstractEventLoop] = []

    def build() -> ServerlessHost:
        loops.append(asyncio.get_running_loop())
        return d.host()

    app = LambdaAdapter(build)
    try:
        app.maintenance_handler(SCHEDULED_EVENT, None)  # nothing to claim yet
        created = app._run(d.create_run("single"))
        ticked = app.maintenance_handler(SCHEDULED_EVENT, d.context())
        event = d.sqs.receive()
        response = app.sqs_handler(event, d.context())
        app._run(asyncio.sleep(0))
        loop = app._run(_current_loop())
    finally:
        app.close()

    assert ticked["maintenance"]["claimed"] == 1
    assert response == {"batchItemFailures": []}
    assert loops == [loop]
    assert created


async def _current_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()
