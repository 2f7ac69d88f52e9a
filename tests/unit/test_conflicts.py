"""A transaction the database aborts for a conflict (a deadlock, a serialization failure)
is tried again as a whole: callers never see it, and stage code never runs twice for it."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from stagewise import (
    JobExecute,
    LeaseReapStale,
    RunCancel,
    RunClaimPending,
    RunCreate,
    RunStatus,
    StageContext,
    StageStatus,
    TransactionConflictError,
    WorkflowBuilder,
    define_stage,
)
from stagewise._conflicts import TRIES
from stagewise._records import Changeset
from stagewise.testing import FakeClock, InMemoryJobQueue, InMemoryPersistence, TestEnvironment


class Conflicting(InMemoryPersistence):
    """Aborts the commit of the next `times` transactions (with `only_finishes`, of those
    that complete a stage), as a database that picked them as a deadlock's victims would:
    nothing of them is written."""

    def __init__(self, *, only_finishes: bool = False) -> None:
        super().__init__()
        self.times = 0
        self.aborted = 0
        self.only_finishes = only_finishes

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with super().transaction() as tx:
            applied: list[Changeset] = []
            apply = tx.apply

            async def spy(changes: Changeset) -> None:
                applied.append(changes)
                await apply(changes)

            tx.apply = spy  # type: ignore[method-assign]
            yield tx
            finishes = any(s.status is StageStatus.COMPLETED for c in applied for s in c.stages)
            if self.times > 0 and (finishes or not self.only_finishes):
                self.times -= 1
                self.aborted += 1
                raise TransactionConflictError("deadlock detected [40P01]")


def env_on(persistence: Conflicting) -> tuple[TestEnvironment, Counter[str]]:
    ran: Counter[str] = Counter()

    def work(ctx: StageContext) -> int:
        ran[ctx.stage_id] += 1
        return 1

    flow = WorkflowBuilder("w").pipe(define_stage(id="s", execute=work)).build()
    clock = FakeClock()
    queue = InMemoryJobQueue(clock, persistence)
    env = TestEnvironment([flow], persistence=persistence, job_transport=queue, clock=clock)
    return env, ran


async def test_every_command_rides_out_conflicts_and_stage_code_runs_once() -> None:
    persistence = Conflicting()
    env, ran = env_on(persistence)

    persistence.times = 2
    run_id = (await env.kernel.dispatch(RunCreate(workflow_id="w"))).run_id
    persistence.times = 2
    claimed = await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w1", limit=1, lease_for=30)
    persistence.times = 1  # the start
    first = await env.kernel.dispatch(JobExecute(job=job, worker_id="w1"))
    persistence.times = 2
    await env.kernel.dispatch(LeaseReapStale())

    assert persistence.aborted == 7
    assert claimed.run_ids == [run_id]
    assert first.outcome == "completed" and ran == {"s": 1}
    assert (await env.get_run(run_id)).status is RunStatus.COMPLETED


async def test_a_finish_aborted_for_a_conflict_is_tried_again_with_its_outcome() -> None:
    persistence = Conflicting(only_finishes=True)
    env, ran = env_on(persistence)
    run_id = await env.create_run("w")
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w1", limit=1, lease_for=30)
    persistence.times = 3

    result = await env.kernel.dispatch(JobExecute(job=job, worker_id="w1"))

    assert persistence.aborted == 3
    assert result.outcome == "completed" and not result.replayed and ran == {"s": 1}
    assert (await env.get_run(run_id)).status is RunStatus.COMPLETED


async def test_a_conflict_that_keeps_coming_is_raised_after_a_few_tries() -> None:
    persistence = Conflicting()
    env, _ = env_on(persistence)
    run_id = await env.create_run("w")
    persistence.times = TRIES

    with pytest.raises(TransactionConflictError):
        await env.kernel.dispatch(RunCancel(run_id=run_id))

    assert persistence.aborted == TRIES
    assert (await env.get_run(run_id)).status is RunStatus.PENDING  # nothing committed
