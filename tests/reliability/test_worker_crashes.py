"""A worker process killed in each phase of its work: another one finishes the run.

Real processes on SQLite (`crash_app.py`), killed with `os._exit(9)` exactly at the moment
under test: after claiming a run, after taking jobs off the queue, inside a stage, while
recording a stage's result (before and after the commit), and while flushing the outbox.
A second worker (another id: it must wait for the dead one's lease) then runs the same work.
Executions are counted in a side table and deliveries in a file, across deaths: a stage runs
again only when the crash came before its result committed, and every event reaches the sink
at least once under its one id.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from stagewise import RunClaimPending, RunCreate, RunStatus, StageStatus
from tests.integration.node.processes import Client
from tests.reliability.conftest import CrashWorkers
from tests.reliability.crash_app import read_sink

pytestmark = pytest.mark.slow

RUNS_AGAIN = {
    # phase: how many times each stage ran in all
    "claim-run": {"a": 1, "b": 1, "c": 1},
    "claim-job": {"a": 1, "b": 1, "c": 1},
    "stage": {"a": 1, "b": 2, "c": 1},  # the interrupted attempt, then one more
    "record-before-commit": {"a": 1, "b": 2, "c": 1},  # its result never committed
    "record-after-commit": {"a": 1, "b": 1, "c": 1},  # its result committed: not run again
    "flush": {"a": 1, "b": 1, "c": 1},  # (or c twice: the crash may interrupt it)
}


async def _events(client: Client, run_id: str) -> list[tuple[int, str, str]]:
    async with client.backend.persistence.transaction() as tx:
        return [(e.seq, e.event_id, e.type) for e in await tx.outbox.events(run_id)]


@pytest.mark.parametrize("phase", list(RUNS_AGAIN))
async def test_a_worker_killed_in_any_phase_loses_nothing(
    phase: str, crash_workers: CrashWorkers, crash_client: Client
) -> None:
    kernel = crash_client.kernel
    if phase == "claim-job":
        # A worker starts the first stages of the runs it claims itself (no queue): to die
        # holding queued jobs it must find a run already claimed, as `stagewise run` does.
        run_id = (await kernel.dispatch(RunCreate(workflow_id="steps", input={"n": 0}))).run_id
        await kernel.dispatch(RunClaimPending(limit=1))
        doomed = crash_workers.spawn_app("doomed", phase=phase)
    else:
        doomed = crash_workers.spawn_app("doomed", phase=phase)
        await crash_workers.ready(doomed)
        run_id = (await kernel.dispatch(RunCreate(workflow_id="steps", input={"n": 0}))).run_id

    assert await doomed.exit_code(within=30) == 9, doomed.text()
    assert "dying at" in doomed.text()

    rescuer = crash_workers.spawn_app("rescuer")
    await crash_client.wait_finished([run_id], within=40, why=crash_workers)
    run, stages = await crash_client.run(run_id)
    assert run.status is RunStatus.COMPLETED, crash_workers.logs()
    assert run.output == {"n": 3}
    ran = Counter(e["stage_id"] for e in crash_workers.executions())
    expected = RUNS_AGAIN[phase]
    if phase == "flush" and ran["c"] == 2:  # c was running in the dying worker
        expected = {**expected, "c": 2}
    assert dict(ran) == expected, crash_workers.logs()
    for stage in stages.values():
        # A crash costs an attempt of each stage the worker held, including the next stage
        # it had just been handed (eager dispatch) and never began.
        assert ran[stage.stage_id] <= stage.attempt <= ran[stage.stage_id] + 1
    assert all(s.status is StageStatus.COMPLETED for s in stages.values())

    # Every event reaches the sink at least once, under the id it was stored with.
    stored = await _events(crash_client, run_id)
    for _ in range(100):
        delivered = read_sink(str(crash_workers.sink))
        if {d["event_id"] for d in delivered} >= {event_id for _, event_id, _ in stored}:
            break
        await asyncio.sleep(0.1)
    by_id = {event_id: seq for seq, event_id, _ in stored}
    assert {d["event_id"] for d in delivered} == set(by_id), crash_workers.logs()
    assert all(by_id[d["event_id"]] == d["seq"] for d in delivered)
    if phase == "flush":
        b_done = [d for d in delivered if d["type"] == "stage.completed" and d["stage_id"] == "b"]
        assert len(b_done) == 2, "delivered before the crash, and again after it"
        assert b_done[0]["event_id"] == b_done[1]["event_id"]
        assert b_done[0]["pid"] == doomed.pid and b_done[1]["pid"] == rescuer.pid


async def test_a_poison_stage_that_kills_its_worker_every_time_fails_after_its_attempts(
    crash_workers: CrashWorkers, crash_client: Client
) -> None:
    # Two workers under a supervisor that restarts a dead one under its id (as systemd or
    # Kubernetes would); the poison stage kills whichever worker runs it.
    pool = {wid: crash_workers.spawn_app(wid) for wid in ("p1", "p2")}
    await crash_workers.ready(*pool.values())
    kernel = crash_client.kernel
    poison = (await kernel.dispatch(RunCreate(workflow_id="poison"))).run_id
    others = [
        (await kernel.dispatch(RunCreate(workflow_id="steps", input={"n": i}))).run_id
        for i in range(20)
    ]

    restarts = 0
    for _ in range(600):
        for wid, worker in list(pool.items()):
            if worker.process.poll() is not None:
                pool[wid] = crash_workers.spawn_app(wid)
                restarts += 1
        statuses = await crash_client.statuses()
        if statuses[RunStatus.RUNNING] + statuses[RunStatus.PENDING] == 0:
            break
        await asyncio.sleep(0.1)

    run, stages = await crash_client.run(poison)
    assert run.status is RunStatus.FAILED, crash_workers.logs()
    boom = stages["boom"]
    assert boom.status is StageStatus.FAILED
    assert boom.attempt == 3, "max_attempts=3: each crash is reaped as one attempt"
    # Whichever came first tells: p2 saw the dead worker silent, or it came back under its id.
    assert boom.error is not None
    assert any(
        why in boom.error.message for why in ("stopped heartbeating", "restarted while it ran")
    ), boom.error.message
    ran = Counter(e["stage_id"] for e in crash_workers.executions() if e["run_id"] == poison)
    assert ran["boom"] == 3, "it stops: no fourth worker dies for it"
    assert restarts >= 3
    finished = []
    for run_id in others:
        other, _ = await crash_client.run(run_id)
        assert other.status is RunStatus.COMPLETED, crash_workers.logs()
        finished.append(other.finished_at)
    assert run.finished_at is not None
    assert min(finished) < run.finished_at, "the other runs flowed while the poison was retried"
