"""Kernel.get_run and Kernel.wait_for_run: a run's end is heard at once when this process
ended it, and read every `poll_interval` (on the injected clock) when another one did."""

from __future__ import annotations

import asyncio

import pytest

from stagewise import (
    JobExecute,
    JobMessage,
    Kernel,
    RunCancel,
    RunCreate,
    RunNotFoundError,
    RunRecord,
    RunStatus,
    create_kernel,
)
from stagewise.testing import (
    CollectingEventSink,
    InMemoryBlobStore,
    InMemoryPersistence,
    NoopScheduler,
    TestEnvironment,
)
from tests.unit.workflows import four_groups


def waiters(kernel: Kernel) -> int:
    """Futures still registered for runs' ends (leaks show up here)."""
    return sum(len(f) for f in kernel._rt.waiters.waiting.values())


async def waiting(kernel: Kernel, run_id: str, **kwargs: float) -> asyncio.Task[RunRecord]:
    """Start waiting for the run, and return once the waiter is registered."""
    before = waiters(kernel)
    task = asyncio.create_task(kernel.wait_for_run(run_id, **kwargs))
    for _ in range(100):
        if waiters(kernel) > before or task.done():
            return task
        await asyncio.sleep(0)
    raise AssertionError("the waiter never registered")


async def execute_all(env: TestEnvironment, first: JobMessage) -> None:
    """Run the whole run as one chained worker would, on the current clock."""
    pending = [first]
    while pending:
        result = await env.kernel.dispatch(JobExecute(job=pending.pop(), worker_id="w", chain=True))
        assert result.outcome == "completed"
        if result.next_job is not None:
            pending.append(result.next_job)
        pending += await env.queue.dequeue(worker_id="w", limit=10, lease_for=30)


async def test_get_run_reads_the_run_or_none() -> None:
    env = TestEnvironment([four_groups()])
    run_id = await env.create_run("four", {"n": 1})
    run = await env.kernel.get_run(run_id)
    assert run is not None
    assert (run.run_id, run.status) == (run_id, RunStatus.PENDING)
    assert await env.kernel.get_run("nope") is None


async def test_a_run_with_an_attempt_handed_here_is_not_read_while_it_runs() -> None:
    env = TestEnvironment([four_groups()])
    created = await env.kernel.dispatch(
        RunCreate(workflow_id="four", input={"n": 1}, worker_id="w")
    )
    persistence = env.persistence
    assert isinstance(persistence, InMemoryPersistence)
    before = persistence.transactions
    task = await waiting(env.kernel, created.run_id, poll_interval=3600)
    await asyncio.sleep(0)
    assert persistence.transactions == before  # no read competes with the attempt

    await execute_all(env, created.started_jobs[0])
    run = await asyncio.wait_for(task, timeout=1)
    assert run.status is RunStatus.COMPLETED


async def test_a_run_ended_in_this_process_resolves_the_waiter_at_once() -> None:
    env = TestEnvironment([four_groups()])
    created = await env.kernel.dispatch(
        RunCreate(workflow_id="four", input={"n": 1}, worker_id="w")
    )
    task = await waiting(env.kernel, created.run_id, poll_interval=3600)
    start = env.clock.now()

    await execute_all(env, created.started_jobs[0])
    run = await asyncio.wait_for(task, timeout=1)

    assert (run.status, run.output) == (RunStatus.COMPLETED, {"n": 8})
    assert env.clock.now() == start  # no poll interval went by: the commit resolved it
    assert waiters(env.kernel) == 0


async def test_a_cancel_in_this_process_resolves_the_waiter() -> None:
    env = TestEnvironment([four_groups()])
    run_id = await env.create_run("four", {"n": 1})
    task = await waiting(env.kernel, run_id, poll_interval=3600)

    await env.kernel.dispatch(RunCancel(run_id=run_id, reason="no"))

    run = await asyncio.wait_for(task, timeout=1)
    assert run.status is RunStatus.CANCELLED
    assert waiters(env.kernel) == 0


async def test_a_run_already_finished_is_returned_at_once() -> None:
    env = TestEnvironment([four_groups()])
    run = await env.run("four", {"n": 1})
    assert (await env.kernel.wait_for_run(run.run_id, timeout=0)).status is RunStatus.COMPLETED
    assert waiters(env.kernel) == 0


async def test_a_run_ended_by_another_process_is_found_by_polling() -> None:
    env = TestEnvironment([four_groups()])
    other = create_kernel(  # another process: same database, its own kernel
        persistence=env.persistence,
        blob_store=InMemoryBlobStore(),
        job_transport=env.queue,
        event_sink=CollectingEventSink(),
        scheduler=NoopScheduler(),
        clock=env.clock,
        registry=env.registry,
    )
    run_id = await env.create_run("four", {"n": 1})
    task = await waiting(env.kernel, run_id, poll_interval=5)

    await other.dispatch(RunCancel(run_id=run_id))
    await asyncio.sleep(0.01)
    assert not task.done()  # this process did not hear of it ...

    env.clock.advance(5)  # ... until its next read
    run = await asyncio.wait_for(task, timeout=1)
    assert run.status is RunStatus.CANCELLED
    assert waiters(env.kernel) == 0
    await other.aclose()


async def test_waiting_times_out_on_the_injected_clock() -> None:
    env = TestEnvironment([four_groups()])
    run_id = await env.create_run("four", {"n": 1})
    task = await waiting(env.kernel, run_id, timeout=10, poll_interval=3)

    for _ in range(3):  # polls at 3, 6, 9: still pending
        env.clock.advance(3)
        await asyncio.sleep(0.005)
        assert not task.done()
    env.clock.advance(1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(task, timeout=1)
    assert waiters(env.kernel) == 0


async def test_an_unknown_run_is_refused() -> None:
    env = TestEnvironment([four_groups()])
    with pytest.raises(RunNotFoundError):
        await env.kernel.wait_for_run("nope")
    assert waiters(env.kernel) == 0


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    env = TestEnvironment([four_groups()])
    run_id = await env.create_run("four", {"n": 1})
    tasks = [await waiting(env.kernel, run_id) for _ in range(2)]
    assert waiters(env.kernel) == 2

    tasks[0].cancel()
    await asyncio.gather(tasks[0], return_exceptions=True)
    assert waiters(env.kernel) == 1

    await env.kernel.dispatch(RunCancel(run_id=run_id))
    assert (await asyncio.wait_for(tasks[1], timeout=1)).status is RunStatus.CANCELLED
    assert waiters(env.kernel) == 0
    assert env.kernel._rt.waiters.waiting == {}
