"""The fleet's workers: beats, and taking over the attempts of a worker that is gone."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

from stagewise import (
    JobExecute,
    KernelSettings,
    LeaseReapStale,
    RunClaimPending,
    StageContext,
    StageStatus,
    WorkerBeat,
    WorkerRecord,
    WorkerStop,
    WorkflowBuilder,
    define_stage,
)
from stagewise._workers import next_beat, presumed_gone
from stagewise.testing import TestEnvironment
from stagewise.testing._clock import DEFAULT_START as T0

BEAT = 5.0


def worker(worker_id: str, seen: float, *, streak: float = 0.0, **fields: object) -> WorkerRecord:
    return WorkerRecord(
        worker_id=worker_id,
        host="h",
        pid=1,
        started_at=T0,
        last_seen_at=T0 + timedelta(seconds=seen),
        beat_interval=BEAT,
        streak_since=T0 + timedelta(seconds=streak),
        **fields,  # type: ignore[arg-type]
    )


def at(seconds: float):  # type: ignore[no-untyped-def]
    return T0 + timedelta(seconds=seconds)


# --- the rules -------------------------------------------------------------------------------


def test_a_beat_on_time_keeps_the_streak_and_a_late_one_starts_a_new_one() -> None:
    first = next_beat(None, worker("a", 0), at(0))
    on_time = next_beat(first, worker("a", 0), at(7))
    late = next_beat(on_time, worker("a", 0), at(20))

    assert (first.started_at, first.streak_since) == (at(0), at(0))
    assert (on_time.started_at, on_time.streak_since, on_time.last_seen_at) == (at(0), at(0), at(7))
    assert (late.started_at, late.streak_since) == (at(0), at(20))
    restarted = next_beat(replace(late, stopped_at=at(21)), worker("a", 0), at(30))
    assert (restarted.started_at, restarted.streak_since) == (at(30), at(30))


def test_a_worker_is_gone_after_two_and_a_half_beats_of_silence_while_the_observer_beat() -> None:
    observer = worker("me", 100, streak=0)

    assert not presumed_gone(worker("b", 90), observer, at(100))  # 10 s: two beats
    assert presumed_gone(worker("b", 87), observer, at(100))  # 13 s: over two and a half
    assert not presumed_gone(observer, observer, at(1000))  # never oneself
    assert not presumed_gone(worker("b", 0, stopped_at=at(1)), observer, at(1000))


def test_after_an_outage_silence_counts_only_from_the_observers_own_return() -> None:
    back = worker("me", 100, streak=100)  # it could not reach the database before 100 either

    assert not presumed_gone(worker("b", 40), back, at(110))  # 10 s since `back` returned
    assert presumed_gone(worker("b", 40), back, at(113))


# --- the kernel --------------------------------------------------------------------------------


def held_workflow(gate: asyncio.Event, started: asyncio.Event) -> TestEnvironment:
    async def hold(ctx: StageContext) -> str:
        started.set()
        await gate.wait()
        return "done"

    wf = WorkflowBuilder("held").pipe(define_stage(id="s", execute=hold)).build()
    return TestEnvironment([wf], settings=KernelSettings(lease_seconds=300))


async def beat(env: TestEnvironment, worker_id: str) -> list[str]:
    result = await env.kernel.dispatch(WorkerBeat(worker_id=worker_id, beat_interval=BEAT))
    return result.gone


async def a_stage_held_by(env: TestEnvironment, worker_id: str, started: asyncio.Event) -> str:
    run_id = await env.create_run("held")
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id=worker_id, limit=1, lease_for=300)
    task = asyncio.ensure_future(env.kernel.dispatch(JobExecute(job=job, worker_id=worker_id)))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()  # the process died: nothing of it runs any more
    await asyncio.gather(task, return_exceptions=True)
    return run_id


async def test_the_attempts_of_a_gone_worker_are_taken_over_long_before_their_lease() -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    env = held_workflow(gate, started)
    await beat(env, "a")
    await beat(env, "b")
    run_id = await a_stage_held_by(env, "b", started)

    for _ in range(2):  # b stays silent; a beats on
        env.clock.advance(BEAT)
        assert await beat(env, "a") == []
    assert (await env.kernel.dispatch(LeaseReapStale(observer="a"))).retried == 0
    env.clock.advance(BEAT)
    assert await beat(env, "a") == ["b"]  # 15 s of silence: gone, 285 s before its lease

    reaped = await env.kernel.dispatch(LeaseReapStale(observer="a"))
    stage = (await env.stages(run_id))["s"]
    assert reaped.retried == 1
    assert (stage.status, stage.attempt) == (StageStatus.RETRYING, 2)
    assert stage.error is not None and "worker 'b'" in stage.error.message
    assert "the worker is gone" in stage.error.message
    assert stage.due_at == env.clock.now()  # due at once: the stage did not fail, b died


async def test_after_an_outage_nobody_is_taken_over_for_having_missed_beats() -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    env = held_workflow(gate, started)
    await beat(env, "a")
    await beat(env, "b")
    run_id = await a_stage_held_by(env, "b", started)
    env.clock.advance(60)  # the database was unreachable for everyone

    assert await beat(env, "a") == []  # back first: b had no time to beat yet
    assert (await env.kernel.dispatch(LeaseReapStale(observer="a"))).retried == 0
    await beat(env, "b")
    env.clock.advance(BEAT)
    assert await beat(env, "a") == []
    assert (await env.stages(run_id))["s"].status is StageStatus.RUNNING


async def test_a_worker_that_stopped_cleanly_is_not_taken_over() -> None:
    gate, started = asyncio.Event(), asyncio.Event()
    env = held_workflow(gate, started)
    await beat(env, "a")
    await beat(env, "b")
    await env.kernel.dispatch(WorkerStop(worker_id="b"))
    env.clock.advance(10 * BEAT)

    assert await beat(env, "a") == []
    async with env.persistence.transaction() as tx:
        rows = {w.worker_id: w for w in await tx.workers.find()}
    assert rows["b"].stopped_at is not None and not rows["b"].is_live(env.clock.now())
    assert rows["a"].is_live(env.clock.now())
    assert rows["a"].workflows == (("held", env.registry.get_workflow("held").version),)
