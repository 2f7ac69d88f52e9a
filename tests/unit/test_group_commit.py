"""Group commit: concurrent steps of one command share a transaction, and fail alone."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from stagewise import (
    JobExecute,
    KernelSettings,
    RunClaimPending,
    RunCreate,
    RunStatus,
    StageContext,
    StageStatus,
    Workflow,
    WorkflowBuilder,
    define_stage,
)
from stagewise._group import Step
from stagewise._run import Run
from stagewise._runtime import Runtime
from stagewise._unit import UnitOfWork
from stagewise.testing import (
    FakeClock,
    InMemoryJobQueue,
    InMemoryPersistence,
    MemoryTransaction,
    TestEnvironment,
)
from tests.unit.workflows import Num, add_branches, double

CMD = "job.execute"


async def plus_one(ctx: StageContext) -> Num:
    return Num(n=ctx.input.n + 1)


def fan_out() -> Workflow:
    """n -> first(+1) -> [left(+1), right(*2)] -> join(left+right) = 3n+4, all async."""
    return (
        WorkflowBuilder("fan", input=Num, output=Num)
        .pipe(define_stage(id="first", input=Num, output=Num, execute=plus_one))
        .parallel(
            [
                define_stage(id="left", input=Num, output=Num, execute=plus_one),
                define_stage(id="right", input=Num, output=Num, execute=double),
            ]
        )
        .pipe(define_stage(id="join", output=Num, execute=add_branches))
        .build()
    )


class CountingPersistence:
    """In-memory persistence that counts the transactions begun on it."""

    def __init__(self) -> None:
        self.inner = InMemoryPersistence()
        self.begun = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTransaction]:
        self.begun += 1
        async with self.inner.transaction() as tx:
            yield tx


def counted_env(
    settings: KernelSettings | None = None,
) -> tuple[TestEnvironment, CountingPersistence]:
    clock = FakeClock()
    counting = CountingPersistence()
    env = TestEnvironment(
        [fan_out()],
        settings=settings,
        clock=clock,
        persistence=counting,
        job_transport=InMemoryJobQueue(clock, counting.inner),
    )
    return env, counting


def runtime_of(env: TestEnvironment) -> Runtime:
    return env.kernel._rt


def change_priority(run: Run, priority: int) -> None:
    """A change to the run's row, whatever it means: the group commit's business is only
    that it is written (or not) with its transaction."""
    run._bump(priority=priority)
    run._decided(None)


async def execute_concurrently(env: TestEnvironment) -> int:
    """Execute every available job at once, round after round until none is left; returns
    how many jobs ran."""
    executed = 0
    while jobs := await env.queue.dequeue(worker_id="w", limit=100, lease_for=60):
        results = await asyncio.gather(
            *(env.kernel.dispatch(JobExecute(job=job, worker_id="w")) for job in jobs)
        )
        assert [r.outcome for r in results] == ["completed"] * len(jobs)
        executed += len(jobs)
    return executed


async def claimed_runs(env: TestEnvironment, count: int) -> list[str]:
    run_ids = [await env.create_run("fan", {"n": n}) for n in range(count)]
    await env.kernel.dispatch(RunClaimPending(limit=count))
    return run_ids


async def test_concurrent_jobs_of_many_runs_share_transactions_and_all_complete() -> None:
    env, counting = counted_env()
    run_ids = await claimed_runs(env, 8)
    counting.begun = 0

    executed = await execute_concurrently(env)

    assert executed == 8 * 4
    assert counting.begun < executed
    for n, run_id in enumerate(run_ids):
        run = await env.get_run(run_id)
        assert run.status is RunStatus.COMPLETED
        assert await env.output(run_id) == {"n": 3 * n + 4}
        stages = await env.stages(run_id)
        assert {(s.status, s.attempt) for s in stages.values()} == {(StageStatus.COMPLETED, 1)}
        events = counting.inner.snapshot_events(run_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert run.event_seq == len(events)
        types = Counter(e.type for e in events)
        assert (types["stage.started"], types["stage.completed"], types["run.completed"]) == (
            4,
            4,
            1,
        )
        assert events[-1].type == "run.completed"


async def test_without_grouping_each_job_takes_a_start_and_a_finish_transaction() -> None:
    env, counting = counted_env(KernelSettings(group_commit=1))
    run_ids = await claimed_runs(env, 8)
    counting.begun = 0

    executed = await execute_concurrently(env)

    assert executed == 8 * 4
    assert counting.begun == 2 * executed
    for n, run_id in enumerate(run_ids):
        assert await env.output(run_id) == {"n": 3 * n + 4}


def set_priority(priority: int) -> Step[int]:
    async def step(unit: UnitOfWork, run: Run | None) -> int:
        assert run is not None
        change_priority(run, priority)
        return priority

    return step


async def test_a_raising_step_fails_alone_and_the_rest_of_its_group_commits() -> None:
    env = TestEnvironment([fan_out()])
    group = runtime_of(env).group
    a, b, c = [await env.create_run("fan", {"n": 1}) for _ in range(3)]

    async def explode(unit: UnitOfWork, run: Run | None) -> int:
        assert run is not None
        change_priority(run, 99)
        raise ValueError("boom")

    async def run_of(unit: UnitOfWork, run: Run | None) -> Run | None:
        return run

    results = await asyncio.gather(
        group.run(CMD, a, set_priority(5)),
        group.run(CMD, b, explode),
        group.run(CMD, "no-such-run", run_of),
        group.run(CMD, c, set_priority(7)),
        return_exceptions=True,
    )

    assert isinstance(results[1], ValueError) and str(results[1]) == "boom"
    assert (results[0], results[2], results[3]) == (5, None, 7)
    assert [(await env.get_run(r)).priority for r in (a, b, c)] == [5, 0, 7]


async def test_a_step_for_a_missing_run_gets_no_scope_alone_too() -> None:
    env = TestEnvironment([fan_out()])

    async def run_of(unit: UnitOfWork, run: Run | None) -> Run | None:
        return run

    assert await runtime_of(env).group.run(CMD, "no-such-run", run_of) is None


async def test_a_caller_cancelled_while_its_step_is_queued_drops_the_step() -> None:
    env = TestEnvironment([fan_out()])
    group = runtime_of(env).group
    a, b, c = [await env.create_run("fan", {"n": 1}) for _ in range(3)]
    inside, release = asyncio.Event(), asyncio.Event()
    ran: list[str] = []

    async def hold(unit: UnitOfWork, run: Run | None) -> str:
        inside.set()
        await release.wait()
        return "held"

    def note(name: str) -> Step[str]:
        async def step(unit: UnitOfWork, run: Run | None) -> str:
            ran.append(name)
            return name

        return step

    first = asyncio.create_task(group.run(CMD, a, hold))
    await inside.wait()  # its transaction is open: what comes next queues behind it
    dropped = asyncio.create_task(group.run(CMD, b, note("dropped")))
    kept = asyncio.create_task(group.run(CMD, c, note("kept")))
    for _ in range(3):
        await asyncio.sleep(0)
    dropped.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dropped
    release.set()

    assert await first == "held"
    assert await kept == "kept"
    assert ran == ["kept"]


async def test_steps_of_one_run_in_one_group_see_each_others_changes_in_queue_order() -> None:
    env = TestEnvironment([fan_out()])
    group = runtime_of(env).group
    run_id = await env.create_run("fan", {"n": 1})
    seen: list[tuple[int, int]] = []
    units: set[int] = set()

    def bump(priority: int) -> Step[None]:
        async def step(unit: UnitOfWork, run: Run | None) -> None:
            assert run is not None
            units.add(id(unit))
            seen.append((run.record.priority, priority))
            change_priority(run, priority)

        return step

    await asyncio.gather(*(group.run(CMD, run_id, bump(p)) for p in (1, 2, 3)))

    assert len(units) == 1  # one transaction
    assert seen == [(0, 1), (1, 2), (2, 3)]
    assert (await env.get_run(run_id)).priority == 3


@pytest.mark.parametrize(("limit", "sizes"), [(64, [5]), (2, [2, 2, 1]), (1, [1] * 5)])
async def test_group_commit_caps_how_many_steps_share_a_transaction(
    limit: int, sizes: list[int]
) -> None:
    env = TestEnvironment([fan_out()], settings=KernelSettings(group_commit=limit))
    group = runtime_of(env).group
    run_ids = [await env.create_run("fan", {"n": 1}) for _ in range(5)]
    units: list[UnitOfWork] = []

    async def note(unit: UnitOfWork, run: Run | None) -> None:
        assert run is not None
        units.append(unit)

    await asyncio.gather(*(group.run(CMD, r, note) for r in run_ids))

    assert sorted(Counter(id(u) for u in units).values(), reverse=True) == sizes


async def test_concurrent_run_creations_share_a_transaction() -> None:
    env, counting = counted_env()

    created = await asyncio.gather(
        *(env.kernel.dispatch(RunCreate(workflow_id="fan", input={"n": n})) for n in range(8))
    )

    assert counting.begun < 8
    assert len({c.run_id for c in created}) == 8
    for n, c in enumerate(created):
        run = await env.get_run(c.run_id)
        assert (run.status, run.input, run.event_seq) == (RunStatus.PENDING, {"n": n}, 1)


async def test_concurrent_creations_with_one_idempotency_key_make_one_run() -> None:
    env, _ = counted_env()

    created = await asyncio.gather(
        *(
            env.kernel.dispatch(RunCreate(workflow_id="fan", input={"n": 1}, idempotency_key="k"))
            for _ in range(4)
        )
    )

    assert len({c.run_id for c in created}) == 1
    assert sorted(c.created for c in created) == [False, False, False, True]
