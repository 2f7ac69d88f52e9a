"""A deploy that renames, removes or inserts a stage while runs are in flight, with real
worker processes on PostgreSQL (issue 14's scenario).

Workers serving v1 of `deploy` (a -> b -> c) are SIGKILLed with runs in b and in c. Workers
with only the changed plan then start: they must keep serving (no exit, no traceback, no
"has no stage"), leave every v1 run untouched, and `runs show` must say why those wait.
A worker that registers both versions (the rollout docs/deploys.md describes) then
finishes every v1 run under v1's plan, and new runs take the new plan.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import pytest

from stagewise import RunCreate, RunStatus, WorkflowRegistry
from stagewise_node.cli._views import load_run
from stagewise_sql import SqlBackend
from tests.integration.node.deploy_flows import PLANS, PLANS_ENV, plan
from tests.integration.node.processes import Worker, Workers

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
APP = "tests.integration.node.deploy_flows:workflows"


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("change", ["renamed", "removed", "inserted"])
async def test_a_deploy_that_changes_a_stage_leaves_runs_in_flight_to_their_own_plan(
    change: str, workers: Workers, db_url: str
) -> None:
    backend = await SqlBackend.connect(db_url)
    old = backend.kernel(WorkflowRegistry([plan("v1")]))
    both = backend.kernel(WorkflowRegistry([plan("v1"), plan(change)]))

    def spawn(worker_id: str, plans: str) -> Worker:
        return workers.spawn(
            worker_id, lease=2.0, heartbeat=0.5, poll=0.2, app=APP, env={PLANS_ENV: plans}
        )

    try:
        first = [spawn(f"v1-{i}", "v1") for i in range(2)]
        await workers.ready(*first)
        slow = ["b"] * 3 + ["c"] * 3
        run_ids = [
            (await old.dispatch(RunCreate(workflow_id="deploy", input=inp))).run_id
            for inp in ({"n": 0, "slow": s, "sleep": 30.0} for s in slow)
        ]
        deadline = time.monotonic() + 60
        while Counter(e["stage_id"] for e in workers.executions() if e["finished"] is None) != {
            "b": 3,
            "c": 3,
        }:
            assert time.monotonic() < deadline, workers.logs()
            await asyncio.sleep(0.05)
        for worker in first:
            worker.signal(signal.SIGKILL)
            await worker.exit_code(within=10)
        ran_before = workers.counts()

        # The deploy: only the changed plan. Its workers serve on, and touch nothing of v1.
        second = [spawn(f"new-{i}", change) for i in range(2)]
        await workers.ready(*second)
        await asyncio.sleep(5.0)  # over two leases and many reaps, claims and polls
        for worker in second:
            assert worker.process.poll() is None, worker.text()
            log = worker.text()
            assert "Traceback" not in log and "has no stage" not in log, log
        assert workers.counts() == ran_before, "a worker without v1 ran a stage of v1"
        for run_id in run_ids:
            view = await load_run(
                backend.persistence, backend.blob_store, run_id, now=backend.clock.now()
            )
            assert view.run.status is RunStatus.RUNNING
            assert view.waiting is not None and "no live worker has version" in view.waiting

        # The rollout: one worker with both versions finishes v1's runs under v1's plan.
        third = spawn("both", f"v1,{change}")
        await workers.ready(third)
        fresh = (await both.dispatch(RunCreate(workflow_id="deploy", input={"n": 0}))).run_id
        for run_id in [*run_ids, fresh]:
            done = await both.wait_for_run(run_id, timeout=60)
            assert done.status is RunStatus.COMPLETED, workers.logs()
        counts = workers.counts()
        for run_id, at in zip(run_ids, slow, strict=True):
            run = await both.get_run(run_id)
            assert run is not None and run.output == {"n": 3, "slow": at, "sleep": 30.0}
            assert run.workflow_version == plan("v1").version
            expected = {"a": 1, "b": 2 if at == "b" else 1, "c": 2 if at == "c" else 1}
            assert {s: counts[(run_id, s)] for s in "abc"} == expected, workers.logs()
        newest = await both.get_run(fresh)
        assert newest is not None and newest.workflow_version == plan(change).version
        assert newest.output["n"] == len(PLANS[change])
    finally:
        await old.aclose()
        await both.aclose()
        await backend.close()
