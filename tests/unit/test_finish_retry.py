"""An attempt's finish that fails for a transient reason is tried again while its lease
holds: the stage's code does not run again for a database that blinked."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest

from stagewise import (
    JobExecute,
    KernelSettings,
    LeaseReapStale,
    RunClaimPending,
    RunStatus,
    StageContext,
    StageStatus,
    TransientError,
    WorkflowBuilder,
    define_stage,
)
from stagewise._records import Changeset
from stagewise.testing import FakeClock, InMemoryJobQueue, InMemoryPersistence, TestEnvironment
from stagewise.testing._clock import DEFAULT_START as T0

LEASE = 30.0


class LosesFinishes(InMemoryPersistence):
    """Persistence whose next `times` transactions that complete a stage fail with a
    transient error: before their commit (nothing written), or after it (written, and the
    caller never hears)."""

    def __init__(self, times: int, *, after_commit: bool = False) -> None:
        super().__init__()
        self.left = times
        self.after_commit = after_commit
        self.failed = 0

    def _fails(self, applied: list[Changeset]) -> bool:
        completes = any(s.status is StageStatus.COMPLETED for c in applied for s in c.stages)
        if completes and self.left > 0:
            self.left -= 1
            self.failed += 1
            return True
        return False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        applied: list[Changeset] = []
        async with super().transaction() as tx:
            apply = tx.apply

            async def spy(changes: Changeset) -> None:
                applied.append(changes)
                await apply(changes)

            tx.apply = spy  # type: ignore[method-assign]
            yield tx
            if not self.after_commit and self._fails(applied):
                raise TransientError("the connection to the database was lost")
        if self.after_commit and self._fails(applied):
            raise TransientError("the connection was lost while the commit was answered")


def env_with(persistence: InMemoryPersistence) -> tuple[TestEnvironment, Counter[str]]:
    ran: Counter[str] = Counter()

    async def work(ctx: StageContext) -> dict[str, int]:
        ran[ctx.stage_id] += 1
        return {"n": 1}

    flow = (
        WorkflowBuilder("two")
        .pipe(define_stage(id="a", execute=work))
        .pipe(define_stage(id="b", execute=work))
        .build()
    )
    clock = FakeClock()
    env = TestEnvironment(
        [flow],
        persistence=persistence,
        job_transport=InMemoryJobQueue(clock, persistence),  # enqueues in its transactions
        clock=clock,
        settings=KernelSettings(lease_seconds=LEASE),
    )
    return env, ran


async def on_the_clock(env: TestEnvironment, command: JobExecute) -> Any:
    """Dispatch `command`, moving the fake clock on while it waits (its finish backs off)."""
    task = asyncio.ensure_future(env.kernel.dispatch(command))
    while not task.done():
        await asyncio.sleep(0)
        env.clock.advance(0.25)
    return task.result()


@pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
async def test_a_finish_that_fails_transiently_is_tried_again_and_the_stage_runs_once(
    after_commit: bool,
) -> None:
    persistence = LosesFinishes(times=3 if not after_commit else 1, after_commit=after_commit)
    env, ran = env_with(persistence)

    run = await env.run("two")
    stages = await env.stages(run.run_id)

    assert persistence.failed == (3 if not after_commit else 1)
    assert run.status is RunStatus.COMPLETED
    assert ran == {"a": 1, "b": 1}
    assert [(s.status, s.attempt) for s in stages.values()] == [(StageStatus.COMPLETED, 1)] * 2
    events = [e.type for e in persistence.snapshot_events(run.run_id)]
    assert events.count("stage.completed") == 2  # the finish that committed unheard: once
    assert events.count("stage.retrying") == 0


async def test_a_finish_tried_again_after_it_committed_answers_with_its_own_outcome() -> None:
    persistence = LosesFinishes(times=1, after_commit=True)
    env, _ = env_with(persistence)
    run_id = await env.create_run("two")
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=LEASE)

    result = await on_the_clock(env, JobExecute(job=job, worker_id="w"))

    assert (result.outcome, result.replayed) == ("completed", True)
    assert (await env.stages(run_id))["a"].status is StageStatus.COMPLETED


async def test_an_outage_longer_than_the_lease_gives_up_and_the_reaper_says_why() -> None:
    persistence = LosesFinishes(times=10_000)
    env, ran = env_with(persistence)
    run_id = await env.create_run("two")
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=LEASE)

    with pytest.raises(TransientError, match="lost"):
        await on_the_clock(env, JobExecute(job=job, worker_id="w"))
    tries = persistence.failed
    gave_up_at = env.clock.now()
    env.clock.advance(LEASE)  # a reaper's pass, later
    reaped = await env.kernel.dispatch(LeaseReapStale())

    assert 10 < tries < 60, "backing off, not spinning, for about one lease"
    assert gave_up_at <= T0 + timedelta(seconds=LEASE), "never past the lease it held"
    assert reaped.retried == 1
    a = (await env.stages(run_id))["a"]
    assert (a.status, a.attempt) == (StageStatus.RETRYING, 2)
    assert a.error is not None and "its lease expired" in a.error.message
    assert ran["a"] == 1


async def test_a_stage_handed_over_by_a_commit_gone_unheard_is_still_run_by_its_worker() -> None:
    # Eager dispatch: the finish of `a` started `b` for this worker in the transaction that
    # committed unheard. The try again finds `a` recorded and `b` held for this worker: it
    # hands `b` over as the first try would have, instead of leaving it held until its lease.
    persistence = LosesFinishes(times=1, after_commit=True)
    env, ran = env_with(persistence)
    run_id = await env.create_run("two")
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=LEASE)

    first = await on_the_clock(env, JobExecute(job=job, worker_id="w", chain=True))
    assert first.replayed and first.next_job is not None
    assert first.next_job.stage_id == "b"
    second = await on_the_clock(env, JobExecute(job=first.next_job, worker_id="w", chain=True))

    assert second.outcome == "completed" and not second.replayed
    assert (await env.get_run(run_id)).status is RunStatus.COMPLETED
    assert ran == {"a": 1, "b": 1}
