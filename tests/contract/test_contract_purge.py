"""`run.purge` and the configured retention on every backend: only finished runs older than
the cutoff go, and everything of theirs with them; bounded batches; the archive first."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from stagewise import (
    JobExecute,
    KernelSettings,
    LeaseReapStale,
    RetryPolicy,
    RunCancel,
    RunClaimPending,
    RunPurge,
    RunRerunFrom,
    RunStatus,
    StageContext,
    WorkflowBuilder,
    define_stage,
)
from stagewise.testing import TestEnvironment
from tests.conftest import Adapters
from tests.contract.test_kernel_scenarios import make_env


def talk(ctx: StageContext) -> dict[str, Any]:
    ctx.log("info", "talking", n=ctx.input["n"])
    return {"n": ctx.input["n"], "big": "x" * ctx.input.get("big", 0)}


async def keep(ctx: StageContext) -> Any:
    await ctx.storage.put("note", b"kept")
    return ctx.input  # for `talk`


def boom(ctx: StageContext) -> None:
    raise ValueError("no")


WORKFLOWS = [
    WorkflowBuilder("talk")
    .pipe(define_stage(id="keep", execute=keep))
    .pipe(define_stage(id="talk", execute=talk))
    .build(),
    WorkflowBuilder("boom")
    .pipe(define_stage(id="boom", execute=boom, retry=RetryPolicy(max_attempts=1)))
    .build(),
    WorkflowBuilder("wait").pipe(define_stage(id="w", execute=lambda ctx: None)).build(),
]
SMALL_BLOBS = KernelSettings(inline_output_bytes=256)


async def finished(env: TestEnvironment, workflow: str, n: int, **kwargs: Any) -> str:
    run_id = await env.create_run(workflow, {"n": n, **kwargs}, idempotency_key=f"k-{n}")
    await env.run_until_idle()
    return run_id


async def counts(backend: Adapters, env: TestEnvironment, run_id: str) -> dict[str, int]:
    async with backend.persistence.transaction() as tx:
        run = await tx.runs.get(run_id)
        stages = await tx.stages.for_run(run_id)
        events = await tx.outbox.events(run_id)
        logs = await tx.logs.for_run(run_id)
        key = None
        if run is not None and run.idempotency_key is not None:
            key = await tx.idempotency.get("run.create", run.idempotency_key)
    blobs = await env.blobs.list(f"runs/{run_id}/")
    return {
        "run": int(run is not None),
        "stages": len(stages),
        "events": len(events),
        "logs": len(logs),
        "key": int(key is not None),
        "blobs": len(blobs),
    }


async def test_only_runs_finished_before_the_cutoff_go_with_everything_of_theirs(
    backend: Adapters,
) -> None:
    env = make_env(backend, WORKFLOWS, settings=SMALL_BLOBS)
    old = await finished(env, "talk", 1, big=1000)
    failed = await finished(env, "boom", 2)
    cutoff = backend.clock.now() + timedelta(seconds=1)
    backend.clock.advance(3600)
    recent = await finished(env, "talk", 3)
    unfinished = await env.create_run("wait", {"n": 4})  # PENDING, created long ago
    before = await counts(backend, env, old)
    assert before["stages"] == 2 and before["events"] > 0 and before["logs"] == 1
    assert before["key"] == 1 and before["blobs"] == 2  # the storage note; the output, once

    result = await env.kernel.dispatch(RunPurge(finished_before=cutoff))

    assert (result.purged, result.archived, result.more) == (2, 0, False)
    for gone in (old, failed):
        assert await counts(backend, env, gone) == dict.fromkeys(before, 0)
    assert (await counts(backend, env, recent))["run"] == 1
    assert (await env.get_run(unfinished)).status is RunStatus.PENDING
    if backend.sql is not None:  # no delivery row of theirs is left either
        async with backend.persistence.transaction() as tx:
            claimed = await tx.outbox.claim(
                now=backend.clock.now(), limit=10_000, claimer="probe",
                claim_until=backend.clock.now() + timedelta(seconds=1),
            )  # fmt: skip
        assert {c.delivery.run_id for c in claimed} <= {recent, unfinished}
    again = await env.kernel.dispatch(RunPurge(finished_before=cutoff))
    assert again.purged == 0  # purging twice is fine
    # The key is free again: a create with it makes a new run.
    new = await env.create_run("talk", {"n": 1}, idempotency_key="k-1")
    assert new != old


async def test_batches_are_bounded_and_say_when_more_are_left(backend: Adapters) -> None:
    env = make_env(backend, WORKFLOWS)
    ids = [await finished(env, "talk", n) for n in range(5)]
    backend.clock.advance(60)
    cutoff = backend.clock.now()
    sizes = []
    while True:
        result = await env.kernel.dispatch(RunPurge(finished_before=cutoff, limit=2))
        sizes.append(result.purged)
        if not result.more:
            break
    assert sizes == [2, 2, 1]
    for run_id in ids:
        assert (await counts(backend, env, run_id))["run"] == 0


async def test_the_archive_is_written_before_the_run_goes(backend: Adapters) -> None:
    env = make_env(backend, WORKFLOWS, settings=SMALL_BLOBS)
    run_id = await finished(env, "talk", 7, big=1000)
    backend.clock.advance(60)
    result = await env.kernel.dispatch(RunPurge(finished_before=backend.clock.now(), archive=True))
    assert (result.purged, result.archived) == (1, 1)
    document = json.loads(await env.blobs.get(f"archive/talk/{run_id}.json"))
    assert document["run"]["run_id"] == run_id and document["run"]["status"] == "COMPLETED"
    assert document["run"]["output"]["big"] == "x" * 1000  # from the blob store, inlined
    assert [s["stage_id"] for s in document["stages"]] == ["keep", "talk"]
    assert document["stages"][1]["output"]["n"] == 7
    assert document["events"][-1]["type"] == "run.completed"
    assert [line["message"] for line in document["logs"]] == ["talking"]
    assert await env.blobs.list("archive/") == [f"archive/talk/{run_id}.json"]
    assert await env.blobs.list(f"runs/{run_id}/") == []


async def test_a_run_rerun_before_the_purge_is_kept(backend: Adapters) -> None:
    env = make_env(backend, WORKFLOWS)
    run_id = await finished(env, "talk", 8)
    backend.clock.advance(60)
    cutoff = backend.clock.now()
    await env.kernel.dispatch(RunRerunFrom(run_id=run_id, stage_id="talk"))  # RUNNING again
    assert (await env.kernel.dispatch(RunPurge(finished_before=cutoff))).purged == 0
    await env.run_until_idle()
    assert (await env.get_run(run_id)).status is RunStatus.COMPLETED


async def test_retention_is_applied_by_maintenance(backend: Adapters) -> None:
    settings = KernelSettings(retention=3600, purge_batch=2)
    env = make_env(backend, WORKFLOWS, settings=settings)
    ids = [await finished(env, "talk", n) for n in range(3)]
    cancelled = await env.create_run("wait", {"n": 9})
    await env.kernel.dispatch(RunCancel(run_id=cancelled))
    assert (await env.kernel.dispatch(LeaseReapStale())).purged == 0  # not old enough
    backend.clock.advance(3601)
    first = await env.kernel.dispatch(LeaseReapStale())
    second = await env.kernel.dispatch(LeaseReapStale())
    assert (first.purged, second.purged) == (2, 2)
    for run_id in [*ids, cancelled]:
        assert (await counts(backend, env, run_id))["run"] == 0


def test_retention_must_be_positive() -> None:
    with pytest.raises(ValueError, match="retention must be positive"):
        KernelSettings(retention=0)
    with pytest.raises(ValueError, match="purge_batch"):
        KernelSettings(purge_batch=0)


async def test_an_unfinished_run_is_never_purged_whatever_the_cutoff(backend: Adapters) -> None:
    env = make_env(backend, WORKFLOWS)
    run_id = await env.create_run("talk", {"n": 1})
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
    backend.clock.advance(10**6)
    assert (await env.kernel.dispatch(RunPurge(finished_before=backend.clock.now()))).purged == 0
    await env.kernel.dispatch(JobExecute(job=job, worker_id="w"))
    await env.run_until_idle()
    assert (await env.get_run(run_id)).status is RunStatus.COMPLETED
