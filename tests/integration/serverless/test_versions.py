"""A function deployed with a changed workflow leaves the runs of the old version alone:
it takes no job of a version it lacks, its ticks neither fail nor touch those runs, and a
deployment that has the old version again runs them."""

from __future__ import annotations

from stagewise import RunStatus, StageStatus, WorkflowBuilder, WorkflowRegistry, define_stage

from ._support import Deployment


def flow(version: str, stage: str):  # type: ignore[no-untyped-def]
    async def work(ctx):  # type: ignore[no-untyped-def]
        return {"by": ctx.stage_id}

    return WorkflowBuilder("flow", version=version).pipe(define_stage(id=stage, execute=work))


async def test_jobs_of_a_version_the_function_lacks_are_given_back_untouched() -> None:
    old, new = flow("v1", "a").build(), flow("v2", "renamed").build()
    d = Deployment([old])
    try:
        run_id = await d.create_run("flow")
        await d.host().run_maintenance_tick()  # claimed: a's job is on the queue
        d.registry = WorkflowRegistry([new])  # the deploy: v1 is gone

        counts = await d.host().process_available_jobs(max_jobs=5)
        ticked = await d.host().run_maintenance_tick()

        assert counts.processed == 0  # it takes only jobs of the versions it has
        assert ticked.errors == ()
        run = await d.get_run(run_id)
        async with d.persistence.transaction() as tx:
            (stage,) = await tx.stages.for_run(run_id)
        assert run.status is RunStatus.RUNNING and run.workflow_version == "v1"
        assert (stage.stage_id, stage.status, stage.attempt) == ("a", StageStatus.PENDING, 1)

        d.registry = WorkflowRegistry([old, new])  # v1 registered again, as docs/deploys.md says
        again = await d.host().process_available_jobs(max_jobs=5)
        assert again.succeeded == 1
        assert (await d.get_run(run_id)).status is RunStatus.COMPLETED
    finally:
        await d.aclose()
