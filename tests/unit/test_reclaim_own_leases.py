"""A worker restarting under its id takes back its own attempts: the retry is due at once
(the process died, the stage did not fail); an expired lease of another worker keeps the
stage's backoff."""

from __future__ import annotations

from datetime import timedelta

from stagewise import (
    JobExecute,
    KernelSettings,
    LeaseReapStale,
    RunClaimPending,
    StageStatus,
)
from stagewise.testing import TestEnvironment
from tests.contract.test_round_trip_budget import three_stages


async def _running_a(env: TestEnvironment) -> str:
    run_id = await env.create_run("three", {"n": 0})
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w1", limit=1, lease_for=30)
    result = await env.kernel.dispatch(JobExecute(job=job, worker_id="w1", chain=True))
    assert result.next_job is not None  # b is RUNNING under w1, and w1 dies now
    return run_id


async def test_own_attempts_taken_back_on_restart_are_due_at_once() -> None:
    env = TestEnvironment([three_stages()], settings=KernelSettings(lease_seconds=30))
    run_id = await _running_a(env)
    now = env.clock.now()
    reaped = await env.kernel.dispatch(LeaseReapStale(worker_id="w1"))
    assert reaped.retried == 1
    b = (await env.stages(run_id))["b"]
    assert b.status is StageStatus.RETRYING
    assert b.attempt == 2
    assert b.due_at == now


async def test_an_expired_lease_of_another_worker_keeps_the_backoff() -> None:
    env = TestEnvironment([three_stages()], settings=KernelSettings(lease_seconds=30))
    run_id = await _running_a(env)
    env.clock.advance(31)
    reaped = await env.kernel.dispatch(LeaseReapStale(worker_id="w2"))
    assert reaped.retried == 1
    b = (await env.stages(run_id))["b"]
    assert b.status is StageStatus.RETRYING
    assert b.due_at is not None
    assert b.due_at > env.clock.now() + timedelta(seconds=0.5)  # the default ~1 s backoff
