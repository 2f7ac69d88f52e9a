"""`NodeHost.submit`: an application that embeds the kernel and a host creates a run that
starts at once on its own host, in the creating transaction, and awaits its end.

On the in-memory adapters and a FakeClock with every fallback interval at 60 s (see
test_node_host.py): whatever happens, happens because of the submission, a hint or a
commit, never because a poll interval ran out.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from stagewise import (
    RunCreate,
    RunRecord,
    RunStatus,
    StageContext,
    StageStatus,
    WorkflowBuilder,
    define_stage,
)
from stagewise_node import NodeHost
from tests.integration.node.support import FAST, World, eventually, stop_all
from tests.integration.node.test_node_host import three_stages


class CountingQueue:
    """The in-memory queue, counting the jobs that went through it."""

    def __init__(self, queue: object) -> None:
        self._queue = queue
        self.enqueued = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._queue, name)

    async def enqueue(self, jobs: list[object], *, tx: object = None) -> None:
        self.enqueued += len(jobs)
        await self._queue.enqueue(jobs, tx=tx)  # type: ignore[attr-defined]


async def ended(host: NodeHost, run_id: str) -> RunRecord:
    """The run once it ended, as the application awaits it (bounded in real time)."""
    return await asyncio.wait_for(host.kernel.wait_for_run(run_id), timeout=5)


def gated(gate: asyncio.Event) -> object:
    async def hold(ctx: StageContext) -> int:
        await gate.wait()
        return 1

    return WorkflowBuilder("gated").pipe(define_stage(id="hold", execute=hold)).build()


async def test_a_submitted_run_starts_here_at_once_and_wait_for_run_returns_it() -> None:
    world = World.of([three_stages()])
    queue = CountingQueue(world.queue)
    host = world.host(transport=queue)
    await host.start()
    start = world.clock.now()
    try:
        submitted = await host.submit(RunCreate(workflow_id="three", input={"n": 1}))
        assert (submitted.status, submitted.created) == (RunStatus.RUNNING, True)
        (job,) = submitted.started_jobs
        assert job.stage_id == "a"

        run = await ended(host, submitted.run_id)

        assert (run.status, run.output) == (RunStatus.COMPLETED, {"n": 4})
        assert world.clock.now() == start  # no interval waited for, no poll needed
        assert queue.enqueued == 0  # every stage ran here: nothing went through the queue
        await eventually(lambda: host.stats().jobs_processed == 3)  # counted after commit
        stats = host.stats()
        assert (stats.jobs_processed, stats.jobs_succeeded) == (3, 3)
    finally:
        await stop_all(host)


async def test_with_no_free_slot_a_submitted_run_waits_for_a_claim_and_completes() -> None:
    gate = asyncio.Event()
    world = World.of([three_stages(), gated(gate)])
    host = world.host(settings=replace(FAST, concurrency=1))
    await host.start()
    try:
        busy = await host.submit(RunCreate(workflow_id="gated"))
        assert busy.status is RunStatus.RUNNING  # it took the one slot

        waiting = await host.submit(RunCreate(workflow_id="three", input={"n": 1}))
        assert (waiting.status, waiting.started_jobs) == (RunStatus.PENDING, [])

        gate.set()
        run = await ended(host, waiting.run_id)
        assert (run.status, run.output) == (RunStatus.COMPLETED, {"n": 4})
        assert (await world.run(busy.run_id)).status is RunStatus.COMPLETED
    finally:
        await stop_all(host)


async def test_concurrent_submissions_never_take_more_than_the_free_slots() -> None:
    gate = asyncio.Event()
    world = World.of([gated(gate)])
    host = world.host(settings=replace(FAST, concurrency=2))
    await host.start()
    try:
        submitted = await asyncio.gather(
            *(host.submit(RunCreate(workflow_id="gated")) for _ in range(5))
        )
        statuses = sorted(s.status.value for s in submitted)
        assert statuses == [RunStatus.PENDING.value] * 3 + [RunStatus.RUNNING.value] * 2
        assert host.in_flight == 2

        gate.set()
        finished = [await ended(host, s.run_id) for s in submitted]
        assert {run.status for run in finished} == {RunStatus.COMPLETED}
    finally:
        await stop_all(host)


async def test_a_host_that_is_not_running_leaves_the_run_for_a_claim() -> None:
    world = World.of([three_stages()])
    host = world.host()
    submitted = await host.submit(RunCreate(workflow_id="three", input={"n": 1}))
    assert (submitted.status, submitted.started_jobs) == (RunStatus.PENDING, [])
    assert host.in_flight == 0

    await host.start()  # the host claims it, as any PENDING run
    try:
        assert (await ended(host, submitted.run_id)).status is RunStatus.COMPLETED
    finally:
        await stop_all(host)


async def test_a_worker_id_set_by_the_caller_is_kept_and_its_stage_left_to_the_caller() -> None:
    world = World.of([three_stages()])
    host = world.host()
    await host.start()
    try:
        submitted = await host.submit(
            RunCreate(workflow_id="three", input={"n": 1}, worker_id="elsewhere")
        )
        (job,) = submitted.started_jobs
        assert host.in_flight == 0
        stage = (await world.stages(submitted.run_id))[job.stage_id]
        assert (stage.status, stage.worker_id) == (StageStatus.RUNNING, "elsewhere")
    finally:
        await stop_all(host)
