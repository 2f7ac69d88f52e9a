"""Workflow versions: a run is pinned to the plan it was created with, and only ever driven
by that plan; a process that lacks a run's version leaves it to one that has it."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import replace

import pytest
from pydantic import BaseModel

from stagewise import (
    JobExecute,
    LeaseReapStale,
    RetryPolicy,
    RunClaimPending,
    RunCreate,
    RunStatus,
    Stage,
    StageContext,
    StageStatus,
    Workflow,
    WorkflowBuilder,
    WorkflowDefinitionError,
    WorkflowNotFoundError,
    WorkflowRegistry,
    define_stage,
)
from stagewise._errors import WorkflowVersionNotFoundError
from stagewise._records import Changeset, RunWrite
from stagewise.testing import SequentialIds, TestEnvironment

ran: Counter[str] = Counter()
DEPLOYS = itertools.count(1)


def step(name: str) -> Stage:
    def execute(ctx: StageContext) -> int:
        ran[f"{ctx.stage_id}"] += 1
        return (ctx.input or 0) + 1

    return define_stage(id=name, execute=execute, retry=RetryPolicy(max_attempts=1))


def deploy(*stages: str, version: str | None = None) -> Workflow:
    builder = WorkflowBuilder("deploy", version=version)
    for name in stages:
        builder.pipe(step(name))
    return builder.build()


class In(BaseModel):
    n: int


class Wider(BaseModel):
    n: int
    note: str = ""


# --- the version ---------------------------------------------------------------------------


def test_the_version_is_a_fingerprint_of_the_plan_unless_given() -> None:
    base = deploy("a", "b", "c")

    assert deploy("a", "b", "c").version == base.version  # the same plan, the same version
    assert len({base.version, deploy("a", "x", "c").version, deploy("a", "c").version}) == 3
    assert deploy("a", "x", "b", "c").version != base.version  # a stage inserted
    assert deploy("a", "b", "c", version="2026-12").version == "2026-12"


def test_schemas_are_part_of_the_plan_and_retries_are_not() -> None:
    def wf(model: type[BaseModel], attempts: int) -> Workflow:
        stage = define_stage(
            id="a", input=model, execute=lambda ctx: None, retry=RetryPolicy(attempts)
        )
        return WorkflowBuilder("w", input=model).pipe(stage).build()

    assert wf(In, 3).version == wf(In, 5).version
    assert wf(In, 3).version != wf(Wider, 3).version


def test_a_bad_version_is_refused_when_the_workflow_is_defined() -> None:
    with pytest.raises(WorkflowDefinitionError, match="not valid"):
        WorkflowBuilder("w", version="two words")


def test_a_registry_holds_several_versions_and_new_runs_take_the_last_registered() -> None:
    v1, v2 = deploy("a", "b", "c"), deploy("a", "x", "c")
    registry = WorkflowRegistry([v1, v2])

    assert registry.get_workflow("deploy") is v2
    assert registry.get_workflow("deploy", v1.version) is v1
    assert registry.versions("deploy") == [v1.version, v2.version]
    assert sorted(registry.known()) == sorted([("deploy", v1.version), ("deploy", v2.version)])
    assert list(registry) == [v2]
    with pytest.raises(WorkflowVersionNotFoundError) as missing:
        registry.get_workflow("deploy", "nope")
    assert isinstance(missing.value, WorkflowNotFoundError)
    assert v1.version in missing.value.message and v2.version in missing.value.message
    with pytest.raises(WorkflowDefinitionError, match="registered twice"):
        registry.register(deploy("a", "b", "c"))  # another object at v1's version


# --- runs in flight across a deploy ---------------------------------------------------------


async def runs_in_flight(env: TestEnvironment, count: int) -> list[str]:
    """`count` runs: one waiting to be claimed, the others started and part way through."""
    run_ids = [await env.create_run("deploy") for _ in range(count)]
    await env.kernel.dispatch(RunClaimPending(limit=count - 1))
    for _ in range(2):  # run a and (for some) b
        for job in await env.queue.dequeue(worker_id="old", limit=count // 2, lease_for=30):
            await env.kernel.dispatch(JobExecute(job=job, worker_id="old"))
    return run_ids


def redeployed(env: TestEnvironment, *workflows: Workflow) -> TestEnvironment:
    """A process with other code, on the same storage (a deploy)."""
    return TestEnvironment(
        workflows,
        clock=env.clock,
        persistence=env.persistence,
        job_transport=env.queue,
        blob_store=env.blobs,
        ids=SequentialIds(f"deploy{next(DEPLOYS)}"),
    )


@pytest.mark.parametrize(
    "changed",
    [("a", "x", "c"), ("a", "c"), ("a", "b", "x", "c")],
    ids=["renamed", "removed", "inserted"],
)
async def test_a_changed_plan_leaves_runs_in_flight_to_the_old_version(
    changed: tuple[str, ...],
) -> None:
    old, new = deploy("a", "b", "c"), deploy(*changed)
    before = TestEnvironment([old])
    run_ids = await runs_in_flight(before, 6)
    ran.clear()

    only_new = redeployed(before, new)
    report = await only_new.run_until_idle()
    assert not report.outcomes  # nothing executed, refused or reaped
    for run_id in run_ids:  # untouched by the wrong plan
        run = await only_new.get_run(run_id)
        assert run.status in (RunStatus.PENDING, RunStatus.RUNNING)
        assert run.workflow_version == old.version
    assert sum(ran.values()) == 0

    both = redeployed(before, old, new)
    fresh = await both.create_run("deploy")
    await both.run_until_idle()
    for run_id in run_ids:
        run = await both.get_run(run_id)
        assert (run.status, run.output) == (RunStatus.COMPLETED, 3)
        assert sorted(await both.stages(run_id)) == ["a", "b", "c"]  # the old plan's stages
    new_run = await both.get_run(fresh)
    assert (new_run.workflow_version, new_run.status) == (new.version, RunStatus.COMPLETED)
    assert sorted(await both.stages(fresh)) == sorted(changed)


async def test_the_reaper_leaves_a_lease_of_a_version_it_lacks() -> None:
    gate, started = asyncio.Event(), asyncio.Event()

    async def hold(ctx: StageContext) -> None:
        started.set()
        await gate.wait()

    def held(version: str) -> Workflow:
        return WorkflowBuilder("held", version=version).pipe(define_stage(id="a", execute=hold))

    before = TestEnvironment([held("v1").build()])
    run_id = await before.create_run("held")
    await before.kernel.dispatch(RunClaimPending())
    (job,) = await before.queue.dequeue(worker_id="gone", limit=1, lease_for=30)
    worker = asyncio.ensure_future(before.kernel.dispatch(JobExecute(job=job, worker_id="gone")))
    await asyncio.wait_for(started.wait(), 5)
    worker.cancel()  # the worker is gone; its lease stays until it expires
    await asyncio.gather(worker, return_exceptions=True)
    before.clock.advance(3600)

    only_new = redeployed(before, held("v2").build())
    assert (await only_new.kernel.dispatch(LeaseReapStale())).retried == 0
    assert (await only_new.stages(run_id))["a"].status is StageStatus.RUNNING

    back = redeployed(before, held("v1").build())
    assert (await back.kernel.dispatch(LeaseReapStale())).retried == 1


async def test_a_run_made_before_versions_were_recorded_follows_the_newest() -> None:
    wf = deploy("a", "b", "c")
    env = TestEnvironment([wf])
    created = await env.kernel.dispatch(RunCreate(workflow_id="deploy"))
    async with env.persistence.transaction() as tx:  # as an older release wrote it
        (record, _), *_ = await tx.runs.load([created.run_id])
    legacy = RunWrite(replace(record, workflow_version=None, version=2), expected_version=1)
    async with env.persistence.transaction() as tx:
        await tx.apply(Changeset(runs=(legacy,)))

    await env.run_until_idle()

    assert (await env.get_run(created.run_id)).status is RunStatus.COMPLETED


# --- runs no live worker can run -----------------------------------------------------------


async def test_a_beat_that_surveys_says_which_versions_no_live_worker_has() -> None:
    from stagewise import StrandedRuns, WorkerBeat

    old = TestEnvironment([deploy("a", "b", version="v1")])
    await old.create_run("deploy")
    await old.create_run("deploy")
    new = TestEnvironment(
        [deploy("a", "x", version="v2")], persistence=old.persistence, ids=SequentialIds("n")
    )
    await new.create_run("deploy")

    quiet = await new.kernel.dispatch(WorkerBeat(worker_id="w-new", beat_interval=5))
    said = await new.kernel.dispatch(WorkerBeat(worker_id="w-new", beat_interval=5, survey=True))
    await old.kernel.dispatch(WorkerBeat(worker_id="w-old", beat_interval=5))
    served = await new.kernel.dispatch(WorkerBeat(worker_id="w-new", beat_interval=5, survey=True))

    assert quiet.stranded == []  # no survey asked: no read of the runs
    assert said.stranded == [StrandedRuns(workflow_id="deploy", workflow_version="v1", runs=2)]
    assert served.stranded == []  # a live worker has v1 now
    new.clock.advance(60)  # w-old is silent for 60 s: no longer live
    later = await new.kernel.dispatch(WorkerBeat(worker_id="w-new", beat_interval=5, survey=True))
    assert [s.workflow_version for s in later.stranded] == ["v1"]
