"""`process_available_jobs` (pull a few jobs, stop before a deadline) and
`run_maintenance_tick` (one bounded, isolated pass)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from stagewise import RetryPolicy, RunStatus, StageContext, StageStatus
from stagewise.testing import FakeClock, InMemoryJobQueue, InMemoryPersistence
from stagewise_serverless import JobCounts, MaintenanceCounts, ServerlessSettings

from ._support import Deployment, FlakyPersistence, pipeline, single
from .conftest import MakeDeployment


def queue_of(d: Deployment) -> InMemoryJobQueue:
    assert isinstance(d.transport, InMemoryJobQueue)
    return d.transport


async def test_jobs_are_counted_by_what_became_of_them(deploy: MakeDeployment) -> None:
    async def ok(ctx: StageContext) -> int:
        return 1

    async def broken(ctx: StageContext) -> None:
        raise ValueError("bad row 17")

    async def flaky(ctx: StageContext) -> None:
        raise ConnectionError("try later")

    d = deploy(
        [
            single("ok", execute=ok),
            single("broken", execute=broken, retry=RetryPolicy(max_attempts=1)),
            single("flaky", execute=flaky, retry=RetryPolicy(initial_backoff=60)),
        ]
    )
    for workflow_id in ("ok", "broken", "flaky"):
        await d.create_run(workflow_id)
    await d.host().run_maintenance_tick()

    counts = await d.host().process_available_jobs(max_jobs=10)

    assert counts == JobCounts(processed=3, succeeded=1, failed=1, retried=1)
    [retry] = queue_of(d).jobs()  # attempt 2 waits out its backoff
    assert retry.attempt == 2


async def test_it_takes_at_most_max_jobs(deploy: MakeDeployment) -> None:
    d = deploy([single()])
    for _ in range(5):
        await d.create_run("single")
    await d.host().run_maintenance_tick()

    counts = await d.host().process_available_jobs(max_jobs=2)

    assert (counts.processed, counts.succeeded) == (2, 2)
    assert len(queue_of(d)) == 3


async def test_jobs_a_completion_enqueues_are_taken_in_the_same_call(
    deploy: MakeDeployment,
) -> None:
    p = pipeline()
    d = deploy([p.workflow])
    run_id = await d.create_run("pipeline", {"n": 1})
    await d.host().run_maintenance_tick()

    counts = await d.host().process_available_jobs(max_jobs=10)

    assert counts == JobCounts(processed=3, succeeded=3)  # prepare, then left and batch
    stages = await d.stages(run_id)
    assert stages["batch"].status is StageStatus.SUSPENDED
    assert stages["left"].status is StageStatus.COMPLETED


async def test_a_job_that_would_not_finish_before_the_deadline_is_left_on_the_queue(
    deploy: MakeDeployment,
) -> None:
    d = deploy([single(timeout=60)])
    run_id = await d.create_run("single")
    await d.host().run_maintenance_tick()

    counts = await d.host().process_available_jobs(
        max_jobs=5, deadline=d.clock.now() + timedelta(seconds=30)
    )

    assert counts == JobCounts(stopped_at_deadline=True)
    assert (await d.stages(run_id))["only"].status is StageStatus.PENDING
    # Given back at once, not held until its lease runs out.
    [job] = await queue_of(d).dequeue(worker_id="other", limit=1, lease_for=30)
    assert job.run_id == run_id


async def test_it_stops_taking_jobs_once_the_deadline_is_near(deploy: MakeDeployment) -> None:
    async def slow(ctx: StageContext) -> int:
        d.clock.advance(20)
        return 1

    d = deploy([single(execute=slow, timeout=25)])
    for _ in range(4):
        await d.create_run("single")
    await d.host().run_maintenance_tick()

    counts = await d.host().process_available_jobs(
        max_jobs=10, deadline=d.clock.now() + timedelta(seconds=60)
    )

    # 60 s: the first fits (25 + 5), so does the second at 40 s left; at 20 s left, stop.
    assert counts == JobCounts(processed=2, succeeded=2, stopped_at_deadline=True)
    assert len(queue_of(d)) == 2


async def test_jobs_run_concurrently_up_to_the_configured_limit(deploy: MakeDeployment) -> None:
    arrived = 0
    all_in = asyncio.Event()

    async def meet(ctx: StageContext) -> int:
        nonlocal arrived
        arrived += 1
        if arrived == 3:
            all_in.set()
        await all_in.wait()  # finishes only if all three run at once
        return arrived

    d = deploy([single(execute=meet)], settings=ServerlessSettings(concurrency=3))
    for _ in range(3):
        await d.create_run("single")
    await d.host().run_maintenance_tick()

    counts = await asyncio.wait_for(d.host().process_available_jobs(max_jobs=3), timeout=5)

    assert counts.succeeded == 3


async def test_a_job_that_could_not_be_processed_is_given_back_for_later() -> None:
    flaky = FlakyPersistence(InMemoryPersistence())
    d = Deployment([single()], persistence=flaky, external=True)
    try:
        run_id = await d.create_run("single")
        await d.host().run_maintenance_tick()
        flaky.down_runs.add(run_id)

        counts = await d.host().process_available_jobs(max_jobs=5)

        assert counts == JobCounts(processed=1, retried=1)
        queue = queue_of(d)
        assert await queue.next_available_at() == d.clock.now() + timedelta(seconds=15)
        flaky.down_runs.clear()
        d.clock.advance(15)
        assert (await d.host().process_available_jobs()).succeeded == 1
        assert (await d.get_run(run_id)).status is RunStatus.COMPLETED
    finally:
        await d.aclose()


# --- maintenance -------------------------------------------------------------------------


async def test_a_tick_reports_what_each_step_did(deploy: MakeDeployment) -> None:
    p = pipeline(ready_after_checks=1, poll_interval=30)
    d = deploy([p.workflow])
    run_id = await d.create_run("pipeline", {"n": 1})

    first = await d.host().run_maintenance_tick()
    await d.host().process_available_jobs(max_jobs=10)  # prepare, left, batch (suspends)
    d.clock.advance(30)
    second = await d.host().run_maintenance_tick()

    assert first == MaintenanceCounts(claimed=1, events_flushed=2)  # created, started
    assert second.suspended_checked == 1
    assert second.resumed == 1
    assert second.events_flushed > 0
    assert (await d.stages(run_id))["batch"].status is StageStatus.COMPLETED


async def test_a_tick_releases_deliveries_whose_taker_vanished(deploy: MakeDeployment) -> None:
    d = deploy([single()])
    run_id = await d.create_run("single")
    await d.host().run_maintenance_tick()
    # An invocation took the job and was killed before it could start it.
    await queue_of(d).dequeue(worker_id="killed", limit=1, lease_for=30)
    d.clock.advance(31)

    tick = await d.host().run_maintenance_tick()

    assert tick.requeued == 1
    assert (await d.host().process_available_jobs()).succeeded == 1
    assert (await d.get_run(run_id)).status is RunStatus.COMPLETED


async def test_a_failing_step_does_not_stop_the_others() -> None:
    flaky = FlakyPersistence(InMemoryPersistence())
    d = Deployment([single()], persistence=flaky, external=True)
    try:
        await d.create_run("single")
        flaky.down_ops.add("stages.due_for_poll")

        tick = await d.host().run_maintenance_tick()

        assert tick.errors == (
            "stage.pollSuspended: TransientError: connection to the database was lost "
            "(stages.due_for_poll)",
        )
        assert tick.claimed == 1
        assert tick.events_flushed == 2
    finally:
        await d.aclose()


async def test_a_tick_skips_the_steps_it_has_no_time_for(deploy: MakeDeployment) -> None:
    d = deploy([single()])
    await d.create_run("single")

    tick = await d.host().run_maintenance_tick(deadline=d.clock.now() + timedelta(seconds=4))

    assert tick.skipped == (
        "run.claimPending",
        "stage.pollSuspended",
        "lease.reapStale",
        "outbox.flush",
    )
    assert tick.claimed == 0


async def test_building_a_host_touches_no_port() -> None:
    class Unreachable:
        def transaction(self) -> None:
            raise AssertionError("a host must not touch the database when it is built")

    d = Deployment([single()], persistence=Unreachable(), transport=InMemoryJobQueue(FakeClock()))  # type: ignore[arg-type]
    try:
        host = d.host()
        assert host.worker_id == "fn-1"
    finally:
        await d.aclose()
