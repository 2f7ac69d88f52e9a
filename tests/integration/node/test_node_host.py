"""The node host on the in-memory adapters and a FakeClock.

The fallback polling intervals are set far beyond anything these tests wait for, and the
fake clock moves only when a test moves it: whatever happens, happens because of a hint, a
heartbeat or a stop, never because a poll interval ran out.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from stagewise import (
    NotReady,
    Ready,
    RetryPolicy,
    RunCancel,
    RunCreate,
    RunStatus,
    StageContext,
    StagePollSuspended,
    StageStatus,
    Suspend,
    Workflow,
    WorkflowBuilder,
    WorkflowRegistry,
    define_async_batch_stage,
    define_sleep_stage,
    define_stage,
)
from stagewise_node import HostScheduler, NodeHost, NodeHostSettings
from tests.integration.node.support import FAST, World, eventually, stop_all


class Num(BaseModel):
    n: int


async def inc(ctx: StageContext) -> Num:
    return Num(n=ctx.input.n + 1)


def three_stages(workflow_id: str = "three") -> Any:
    return (
        WorkflowBuilder(workflow_id, input=Num, output=Num)
        .pipe(define_stage(id="a", input=Num, output=Num, execute=inc))
        .pipe(define_stage(id="b", input=Num, output=Num, execute=inc))
        .pipe(define_stage(id="c", input=Num, output=Num, execute=inc))
        .build()
    )


async def test_a_three_stage_run_completes_on_hints_alone() -> None:
    world = World.of([three_stages()])
    host = world.host()
    await host.start()
    start = world.clock.now()
    try:
        run_id = await world.create(host.kernel, "three", {"n": 1})
        await eventually(lambda: world.finished(run_id))
        run = await world.run(run_id)
        assert run.status is RunStatus.COMPLETED
        assert run.output == {"n": 4}
        assert world.clock.now() == start  # no polling interval was waited for
        # The run is committed before the job's slot counts it (group commit answers the
        # job's task through a future): wait for the count, not only for the run.
        await eventually(lambda: host.stats().jobs_processed == 3)
        stats = host.stats()
        assert (stats.jobs_processed, stats.jobs_succeeded, stats.jobs_failed) == (3, 3, 0)
        assert stats.worker_id == "w1"
        assert stats.state == "running"
        assert stats.ticks >= 1
    finally:
        await stop_all(host)
    assert host.stats().state == "stopped"


async def test_the_job_slots_bound_concurrency() -> None:
    running = 0
    peak = 0
    gate = asyncio.Event()

    async def hold(ctx: StageContext) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        return 1

    wide = (
        WorkflowBuilder("wide")
        .parallel([define_stage(id=f"s{i}", execute=hold) for i in range(7)])
        .build()
    )
    world = World.of([wide])
    host = world.host(settings=replace(FAST, concurrency=3))
    await host.start()
    try:
        run_id = await world.create(host.kernel, "wide")
        await eventually(lambda: running == 3)
        await asyncio.sleep(0.05)
        assert peak == 3
        assert host.stats().in_flight == 3
        gate.set()
        await eventually(lambda: world.finished(run_id))
        assert await world.status(run_id) is RunStatus.COMPLETED
        assert peak == 3
    finally:
        await stop_all(host)


async def test_a_blocking_sync_stage_keeps_its_lease_through_heartbeats() -> None:
    release = threading.Event()
    calls = Counter[str]()

    def blocking(ctx: StageContext) -> str:  # blocks its thread, never the loop
        calls["blocking"] += 1
        assert release.wait(10)
        return "done"

    wf = WorkflowBuilder("sync").pipe(define_stage(id="block", execute=blocking)).build()
    world = World.of([wf], lease_seconds=3.0)
    host = world.host()  # heartbeat every 1s (fake)
    await host.start()
    try:
        run_id = await world.create(host.kernel, "sync")
        await eventually(lambda: calls["blocking"] == 1)
        # Six lease periods pass on the clock while the thread blocks; heartbeats keep up.
        for _ in range(18):
            beats = host.stats().heartbeats
            world.clock.advance(1)
            await eventually(lambda b=beats: host.stats().heartbeats > b)
            await host.tick()  # reaping finds nothing: the lease is fresh
        stage = (await world.stages(run_id))["block"]
        assert stage.status is StageStatus.RUNNING
        assert stage.attempt == 1
        release.set()
        await eventually(lambda: world.finished(run_id))
        assert await world.status(run_id) is RunStatus.COMPLETED
        assert calls["blocking"] == 1
        assert (await world.stages(run_id))["block"].attempt == 1
    finally:
        release.set()
        await stop_all(host)


async def test_a_retry_starts_when_its_backoff_ends() -> None:
    attempts = 0

    async def flaky(ctx: StageContext) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("first call fails")
        return "ok"

    wf = (
        WorkflowBuilder("flaky")
        .pipe(
            define_stage(
                id="f",
                execute=flaky,
                retry=RetryPolicy(max_attempts=3, initial_backoff=30, jitter=0),
            )
        )
        .build()
    )
    world = World.of([wf])
    host = world.host()
    await host.start()
    try:
        run_id = await world.create(host.kernel, "flaky")
        await eventually(lambda: host.stats().jobs_retried == 1)
        await asyncio.sleep(0.02)
        assert attempts == 1  # nothing runs before the backoff ends
        world.clock.advance(30)  # the hint "job due at +30s" wakes the job loop
        await eventually(lambda: world.finished(run_id))
        assert await world.status(run_id) is RunStatus.COMPLETED
        assert attempts == 2
    finally:
        await stop_all(host)


async def test_a_suspended_stage_is_polled_when_due() -> None:
    checks = 0

    async def submit(ctx: StageContext) -> Suspend:
        return Suspend(state={"job": 7}, poll_interval=60, max_wait=3600)

    async def check(state: Any, ctx: StageContext) -> Ready | NotReady:
        nonlocal checks
        checks += 1
        return Ready(output=state["job"]) if checks >= 2 else NotReady(next_check_in=120)

    wf = (
        WorkflowBuilder("batch")
        .pipe(define_async_batch_stage(id="x", execute=submit, check_completion=check))
        .build()
    )
    world = World.of([wf])
    host = world.host()
    await host.start()
    try:
        run_id = await world.create(host.kernel, "batch")
        await eventually(lambda: due_in(world, run_id, 60))  # suspended, first check in 60 s
        world.clock.advance(60)
        # The first check said NotReady(120): wait until that is recorded, not merely asked,
        # before moving the clock (else the reschedule counts from the later time).
        await eventually(lambda: due_in(world, run_id, 120))
        assert checks == 1
        world.clock.advance(120)
        await eventually(lambda: world.finished(run_id))
        assert (await world.run(run_id)).output == 7
        assert checks == 2
    finally:
        await stop_all(host)


def napping(days: float) -> Any:
    return (
        WorkflowBuilder("nap")
        .pipe(define_sleep_stage(id="nap", duration=timedelta(days=days)))
        .pipe(define_stage(id="after", execute=lambda ctx: ctx.input))
        .build()
    )


async def sleeping(world: World, run_id: str) -> bool:
    stage = (await world.stages(run_id)).get("nap")
    return stage is not None and stage.status is StageStatus.SUSPENDED


async def test_a_sleep_wakes_on_its_hint_at_the_moment_it_is_due() -> None:
    world = World.of([napping(days=3)])
    host = world.host()
    await host.start()
    try:
        run_id = await world.create(host.kernel, "nap", {"n": 1})
        await eventually(lambda: sleeping(world, run_id))
        world.clock.advance(timedelta(days=3).total_seconds() - 1)
        await asyncio.sleep(0.05)
        assert await sleeping(world, run_id)  # not a second early
        world.clock.advance(1)
        await eventually(lambda: world.finished(run_id))
        assert (await world.run(run_id)).output == {"n": 1}
    finally:
        await stop_all(host)


async def test_a_sleep_begun_on_a_host_that_stopped_wakes_on_another() -> None:
    # The hint of the commit that put the run to sleep went to the first host's timer; the
    # second host learns the wake time from its own poll of the due index (next_due_at).
    world = World.of([napping(days=1)])
    first = world.host("w1")
    await first.start()
    try:
        run_id = await world.create(first.kernel, "nap", {"n": 2})
        await eventually(lambda: sleeping(world, run_id))
    finally:
        await stop_all(first)
    second = world.host("w2")
    await second.start()
    try:
        await asyncio.sleep(0.05)  # its first ticks run
        world.clock.advance(timedelta(days=1).total_seconds())
        await eventually(lambda: world.finished(run_id))
        assert (await world.run(run_id)).status is RunStatus.COMPLETED
    finally:
        await stop_all(second)


async def test_a_deadline_is_enforced_on_its_hint_at_its_moment() -> None:
    world = World.of([napping(days=3)])
    host = world.host()
    await host.start()
    try:
        deadline = world.clock.now() + timedelta(hours=1)
        created = await host.kernel.dispatch(RunCreate(workflow_id="nap", deadline=deadline))
        await eventually(lambda: sleeping(world, created.run_id))
        world.clock.advance(3600)
        await eventually(lambda: world.finished(created.run_id))
        run = await world.run(created.run_id)
        assert run.status is RunStatus.FAILED and run.finished_at == deadline
    finally:
        await stop_all(host)


async def due_in(world: World, run_id: str, seconds: float) -> bool:
    """The suspended stage of the run is next due `seconds` from now (its poll is recorded)."""
    stage = (await world.stages(run_id)).get("x")
    return (
        stage is not None
        and stage.status is StageStatus.SUSPENDED
        and not (stage.job_id or "").startswith("poll:")  # no poller holds it
        and stage.due_at == world.clock.now() + timedelta(seconds=seconds)
    )


async def test_a_run_cancelled_elsewhere_cancels_its_stage_at_the_next_heartbeat() -> None:
    started = asyncio.Event()
    interrupted = asyncio.Event()

    async def long(ctx: StageContext) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            interrupted.set()
            raise
        return "never"

    wf = WorkflowBuilder("long").pipe(define_stage(id="l", execute=long)).build()
    world = World.of([wf])
    host = world.host()
    client = world.kernel()  # another process: its cancel reaches the host only via the db
    await host.start()
    try:
        run_id = await world.create(host.kernel, "long")
        await asyncio.wait_for(started.wait(), 5)
        await client.dispatch(RunCancel(run_id=run_id, reason="test"))
        assert not interrupted.is_set()
        world.clock.advance(1)  # the next heartbeat says: cancelled
        await asyncio.wait_for(interrupted.wait(), 5)
        await eventually(lambda: host.stats().jobs_cancelled == 1)
        assert await world.status(run_id) is RunStatus.CANCELLED
        assert host.stats().in_flight == 0
    finally:
        await stop_all(host)
        await client.aclose()


async def test_a_failing_tick_step_does_not_starve_the_others() -> None:
    world = World.of([three_stages()])
    host = world.host()
    real = host.kernel.dispatch

    async def dispatch(command: Any) -> Any:
        if isinstance(command, StagePollSuspended):
            raise RuntimeError("poll step is broken")
        return await real(command)

    host.kernel.dispatch = dispatch  # type: ignore[method-assign]
    await host.start()
    try:
        results = await host.tick()
        assert isinstance(results["stage.pollSuspended"], RuntimeError)
        assert not isinstance(results["run.claimPending"], Exception)
        assert not isinstance(results["lease.reapStale"], Exception)
        assert not isinstance(results["outbox.flush"], Exception)
        stats = host.stats()
        assert stats.tick_errors >= 1
        assert stats.last_error is not None
        assert "poll step is broken" in stats.last_error
        run_id = await world.create(host.kernel, "three", {"n": 0})  # claims still happen
        await eventually(lambda: world.finished(run_id))
        assert await world.status(run_id) is RunStatus.COMPLETED
    finally:
        await stop_all(host)


async def test_two_ticks_never_overlap() -> None:
    world = World.of([three_stages()])
    host = world.host()
    real = host.kernel.dispatch
    inside = 0
    peak = 0

    async def dispatch(command: Any) -> Any:
        nonlocal inside, peak
        if command.type in ("run.claimPending", "outbox.flush"):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1
        return await real(command)

    host.kernel.dispatch = dispatch  # type: ignore[method-assign]
    await host.start()
    try:
        await asyncio.gather(host.tick(), host.tick(), host.tick())
        assert peak == 1
    finally:
        await stop_all(host)


async def test_stop_lets_an_in_flight_stage_finish() -> None:
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(ctx: StageContext) -> str:
        await release.wait()
        finished.append(ctx.stage_id)
        return "ok"

    wf = WorkflowBuilder("slow").pipe(define_stage(id="s", execute=slow)).build()
    world = World.of([wf])
    host = world.host()
    await host.start()
    run_id = await world.create(host.kernel, "slow")
    await eventually(lambda: host.stats().in_flight == 1)
    stopping = asyncio.ensure_future(host.stop(drain_timeout=5))
    await eventually(lambda: host.stats().state == "draining")
    release.set()
    await stopping
    assert finished == ["s"]
    assert await world.status(run_id) is RunStatus.COMPLETED
    assert host.stats().state == "stopped"
    await host.kernel.aclose()


async def test_at_the_drain_deadline_the_lease_is_released_for_another_worker() -> None:
    attempts: list[int] = []

    async def stuck_once(ctx: StageContext) -> int:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            await asyncio.Event().wait()  # never finishes on the first worker
        return ctx.attempt

    wf = (
        WorkflowBuilder("stuck")
        .pipe(define_stage(id="s", execute=stuck_once, retry=RetryPolicy(max_attempts=1)))
        .build()
    )
    world = World.of([wf])
    first = world.host("w1")
    await first.start()
    run_id = await world.create(first.kernel, "stuck")
    await eventually(lambda: attempts == [1])
    await first.stop(drain_timeout=0.05)
    stage = (await world.stages(run_id))["s"]
    # Released at once, not after the lease, and the unfinished attempt is not spent: the
    # next, uncounted, attempt is ready for another worker now (max_attempts is 1).
    assert stage.status is StageStatus.PENDING
    assert (stage.attempt, stage.uncounted) == (2, 1)
    assert [j.attempt for j in world.queue.jobs()] == [2]
    second = world.host("w2")
    await second.start()
    try:
        await eventually(lambda: world.finished(run_id))
        assert await world.status(run_id) is RunStatus.COMPLETED
        assert attempts == [1, 2]
    finally:
        await stop_all(first, second)


async def test_a_forced_stop_ends_the_drain_at_once() -> None:
    started = asyncio.Event()

    async def forever(ctx: StageContext) -> None:
        started.set()
        await asyncio.Event().wait()

    wf = (
        WorkflowBuilder("forever")
        .pipe(define_stage(id="f", execute=forever, retry=RetryPolicy(initial_backoff=0)))
        .build()
    )
    world = World.of([wf])
    host = world.host()
    await host.start()
    run_id = await world.create(host.kernel, "forever")
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.ensure_future(host.stop(drain_timeout=60))
    await eventually(lambda: host.stats().state == "draining")
    host.force_stop()  # a second SIGTERM/SIGINT does this
    await asyncio.wait_for(stopping, 5)
    stage = (await world.stages(run_id))["f"]
    assert (stage.status, stage.attempt, stage.uncounted) == (StageStatus.PENDING, 2, 1)  # released
    await host.kernel.aclose()


async def test_a_restarted_worker_retries_the_attempts_its_id_still_holds() -> None:
    calls: list[int] = []
    hang = asyncio.Event()

    async def step(ctx: StageContext) -> int:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            await hang.wait()
        return ctx.attempt

    wf = (
        WorkflowBuilder("crash")
        .pipe(define_stage(id="s", execute=step, retry=RetryPolicy(initial_backoff=0)))
        .build()
    )
    world = World.of([wf])
    crashed = world.host("w1", settings=replace(FAST, drain_timeout=0))
    crashed._release_own = _nothing  # type: ignore[method-assign]  # a crash releases nothing
    crashed._give_back = _nothing  # type: ignore[method-assign]
    await crashed.start()
    run_id = await world.create(crashed.kernel, "crash")
    await eventually(lambda: calls == [1])
    await crashed.stop()
    assert (await world.stages(run_id))["s"].status is StageStatus.RUNNING  # still held

    restarted = world.host("w1")
    await restarted.start()  # same id: takes its attempts back without waiting for the lease
    try:
        await eventually(lambda: world.finished(run_id))
        assert await world.status(run_id) is RunStatus.COMPLETED
        assert calls == [1, 2]
    finally:
        await stop_all(crashed, restarted)


async def _nothing(*args: object) -> None:
    return None


class _NotifyingQueue:
    """The in-memory queue plus a `wait_for_jobs` the test rings, like PostgreSQL NOTIFY."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self.notified = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)

    async def wait_for_jobs(self, timeout: float) -> bool:  # noqa: ASYNC109 (as the SQL one)
        return await _rung(self.notified, timeout)


async def _rung(event: asyncio.Event, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait up to `timeout` for `event` (a simulated NOTIFY); consume it if it came."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    event.clear()
    return True


async def test_a_notification_wakes_an_idle_worker() -> None:
    world = World.of([three_stages()])
    transport = _NotifyingQueue(world.queue)
    host = world.host(transport=transport)
    client = world.kernel()  # another process: its hints never reach the host
    await host.start()
    await eventually(lambda: host.stats().ticks == 1)  # the first tick found nothing
    try:
        run_id = await world.create(client, "three", {"n": 1})
        await client.dispatch({"type": "run.claimPending"})
        await asyncio.sleep(0.05)
        assert (await world.stages(run_id))["a"].status is StageStatus.PENDING  # nobody knows
        transport.notified.set()  # NOTIFY: jobs were enqueued
        await eventually(lambda: host.stats().jobs_processed >= 1)
        await eventually(lambda: world.finished(run_id))
        assert await world.status(run_id) is RunStatus.COMPLETED
    finally:
        await stop_all(host)
        await client.aclose()


class _RunNotifyingQueue(_NotifyingQueue):
    """... and a `wait_for_runs` the test rings, like PostgreSQL NOTIFY on run insert."""

    def __init__(self, queue: Any) -> None:
        super().__init__(queue)
        self.run_created = asyncio.Event()

    async def wait_for_runs(self, timeout: float) -> bool:  # noqa: ASYNC109 (as the SQL one)
        return await _rung(self.run_created, timeout)


async def test_a_run_notification_makes_an_idle_worker_claim_at_once() -> None:
    world = World.of([three_stages()])
    transport = _RunNotifyingQueue(world.queue)
    host = world.host(transport=transport)
    client = world.kernel()  # another process: its hints never reach the host
    await host.start()
    await eventually(lambda: host.stats().ticks == 1)  # the first tick found nothing
    try:
        run_id = await world.create(client, "three", {"n": 1})
        await asyncio.sleep(0.05)
        assert await world.status(run_id) is RunStatus.PENDING  # nobody knows
        transport.run_created.set()  # NOTIFY: a run was created
        await eventually(lambda: world.finished(run_id))
        assert await world.status(run_id) is RunStatus.COMPLETED
    finally:
        await stop_all(host)
        await client.aclose()


async def test_the_fallback_interval_finds_work_nobody_hinted() -> None:
    world = World.of([three_stages()])
    host = world.host(settings=replace(FAST, claim_interval=5, job_poll_interval=5))
    client = world.kernel()
    await host.start()
    await eventually(lambda: host.stats().ticks == 1)
    try:
        run_id = await world.create(client, "three", {"n": 1})
        await asyncio.sleep(0.05)
        assert await world.status(run_id) is RunStatus.PENDING
        world.clock.advance(5)  # the claim interval: claimed, and its jobs hinted in-process
        await eventually(lambda: world.finished(run_id))
        assert await world.status(run_id) is RunStatus.COMPLETED
    finally:
        await stop_all(host)
        await client.aclose()


async def test_a_dequeue_failure_is_logged_and_retried() -> None:
    world = World.of([three_stages()])

    class Failing(_NotifyingQueue):
        failures = 1

        async def dequeue(self, **kwargs: Any) -> Any:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("queue unreachable")
            return await self._queue.dequeue(**kwargs)

    transport = Failing(world.queue)
    host = world.host(settings=replace(FAST, job_poll_interval=1), transport=transport)
    await host.start()
    try:
        await eventually(lambda: host.stats().last_error is not None)
        run_id = await world.create(host.kernel, "three", {"n": 1})
        await eventually(lambda: world.finished(run_id))
        assert await world.status(run_id) is RunStatus.COMPLETED
    finally:
        await stop_all(host)


async def test_a_scheduler_serves_one_host() -> None:
    world = World.of([three_stages()])
    scheduler = HostScheduler()
    kernel = world.kernel(scheduler)
    NodeHost(kernel=kernel, job_transport=world.queue, worker_id="a", scheduler=scheduler)
    with pytest.raises(RuntimeError, match="already attached"):
        NodeHost(kernel=kernel, job_transport=world.queue, worker_id="b", scheduler=scheduler)
    await kernel.aclose()


def test_the_heartbeat_must_be_shorter_than_the_lease() -> None:
    world = World.of([three_stages()], lease_seconds=3)
    with pytest.raises(ValueError, match="at most half the kernel's"):
        world.host(settings=replace(FAST, heartbeat_interval=3))
    with pytest.raises(ValueError, match="concurrency"):
        NodeHostSettings(concurrency=0)
    with pytest.raises(ValueError, match="claim_interval"):
        NodeHostSettings(claim_interval=0)


async def test_a_host_starts_once_and_stops_twice() -> None:
    world = World.of([three_stages()])
    host = world.host()
    assert host.stats().uptime == 0
    await host.start()
    with pytest.raises(RuntimeError, match="already started"):
        await host.start()
    await asyncio.gather(host.stop(), host.stop())
    await host.stop()
    assert host.stats().state == "stopped"
    await host.kernel.aclose()


async def test_hints_after_stop_are_ignored_and_a_never_started_host_stops() -> None:
    world = World.of([three_stages()])
    host = world.host()
    await host.stop()
    assert host.stats().state == "stopped"
    await host.wake("job.execute", world.clock.now())  # dropped, no error
    await host.kernel.aclose()


def test_the_public_surface_is_pinned() -> None:
    import stagewise_node

    assert stagewise_node.__all__ == [
        "Engine",
        "EngineOptions",
        "HostScheduler",
        "HostState",
        "HostStats",
        "JobWakeups",
        "NodeHost",
        "NodeHostSettings",
        "SyncEngine",
        "default_worker_id",
        "node_host",
    ]
    for name in stagewise_node.__all__:
        assert hasattr(stagewise_node, name)


async def test_a_worker_says_once_that_runs_of_a_version_no_live_worker_has_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def three(version: str) -> Workflow:
        builder = WorkflowBuilder("three", version=version)
        for name in ("a", "b", "c"):
            builder.pipe(define_stage(id=name, execute=lambda ctx: 1))
        return builder.build()

    world = World.of([three("v1")])
    client = world.kernel()
    run_ids = [await world.create(client, "three") for _ in range(2)]
    world.registry = WorkflowRegistry([three("v2")])  # the deploy dropped v1
    host = world.host("w-v2")
    caplog.set_level(logging.INFO, logger="stagewise.node")
    try:
        await host.start()
        for _ in range(30):  # 150 s of beats: two more surveys
            world.clock.advance(host.settings.beat_interval)
            await asyncio.sleep(0.01)
    finally:
        await stop_all(host)
        await client.aclose()

    said = [r.getMessage() for r in caplog.records if "wait: no live worker" in r.getMessage()]
    assert said == [
        "2 unfinished run(s) of workflow 'three' version v1 wait: no live worker has that "
        "version registered (register it again until they finish; docs/deploys.md)"
    ]
    assert [await world.status(r) for r in run_ids] == [RunStatus.PENDING] * 2  # untouched
    async with world.persistence.transaction() as tx:
        (row,) = await tx.workers.find()
    assert row.last_seen_at - row.started_at >= timedelta(seconds=120), "it beat, surveying"
