"""The hot path's database budget (DESIGN.md): at most two transactions per stage
(claim+start, finish+advance) and one per run creation; with eager dispatch, one per stage.

Counted deterministically on the real SQLite and PostgreSQL adapters
(`stagewise_sql.count_statements`: SQLAlchemy engine events, and asyncpg's query loggers for
what PostgreSQL's hot path sends on the driver): commits, and statements sent to the
database. The figures are printed so a change in the statement count shows up in the test
log; the assertions hold the transaction budget and a ceiling on statements that catches
per-row round trips creeping in.

Not counted here: the transport's dequeue, which hands a worker up to N jobs in one
statement before `job.execute` runs (amortized over the batch; see bench/ for figures).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from stagewise import JobExecute, JobMessage, RunClaimPending, RunCreate, RunStatus
from stagewise.testing import TestEnvironment
from stagewise_sql import Counts, count_statements
from tests.conftest import Adapters
from tests.contract.test_kernel_scenarios import make_env
from tests.unit.workflows import Num


@contextmanager
def counting(backend: Adapters) -> Iterator[Counts]:
    assert backend.sql is not None
    with count_statements(backend.sql.engine.sync_engine) as counts:
        yield counts


async def counted_chain(backend: Adapters, env: TestEnvironment, job: JobMessage) -> list[Counts]:
    """Execute `job` and each stage handed on after it, as the node host does (`chain=True`,
    one worker); what each execution cost."""
    per_stage: list[Counts] = []
    next_job: JobMessage | None = job
    while next_job is not None:
        with counting(backend) as stage:
            result = await env.kernel.dispatch(JobExecute(job=next_job, worker_id="w", chain=True))
        assert result.outcome == "completed"
        per_stage.append(stage)
        next_job = result.next_job
    return per_stage


def three_stages() -> object:
    from stagewise import WorkflowBuilder, define_stage

    def plus(ctx: object) -> Num:
        return Num(n=ctx.input.n + 1)  # type: ignore[attr-defined]

    builder = WorkflowBuilder("three", input=Num, output=Num)
    for stage_id in ("a", "b", "c"):
        builder.pipe(define_stage(id=stage_id, input=Num, output=Num, execute=plus))
    return builder.build()


async def test_hot_path_transactions_per_stage_and_per_run_creation(
    sql_backend: Adapters,
) -> None:
    env: TestEnvironment = make_env(sql_backend, [three_stages()])

    with counting(sql_backend) as create:
        run = await env.kernel.dispatch(RunCreate(workflow_id="three", input={"n": 0}))
    assert create.commits == 1

    await env.kernel.dispatch(RunClaimPending())
    per_stage: list[Counts] = []
    for _ in range(3):
        (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
        with counting(sql_backend) as stage:
            result = await env.kernel.dispatch(JobExecute(job=job, worker_id="w"))
        assert result.outcome == "completed"
        per_stage.append(stage)

    final = await env.get_run(run.run_id)
    assert final.status is RunStatus.COMPLETED
    assert final.output == {"n": 3}
    print(
        f"\n{sql_backend.name}: run.create {create.commits} tx / {create.statements} stmts "
        f"{dict(create.shapes)}; "
        + "; ".join(
            f"stage {i + 1}: {c.commits} tx / {c.statements} stmts" for i, c in enumerate(per_stage)
        )
    )
    # claim+start and finish+advance: two transactions per stage, whatever it enqueues
    assert [c.commits for c in per_stage] == [2, 2, 2]
    assert all(c.statements <= 20 for c in per_stage), per_stage


async def test_eager_dispatch_takes_one_transaction_per_later_stage(
    sql_backend: Adapters,
) -> None:
    """With `chain=True` (the node host), the transaction that records a stage also starts
    the next one for the same worker: no dequeue and no start transaction for it."""
    env: TestEnvironment = make_env(sql_backend, [three_stages()])
    run = await env.kernel.dispatch(RunCreate(workflow_id="three", input={"n": 0}))
    await env.kernel.dispatch(RunClaimPending())
    (job,) = await env.queue.dequeue(worker_id="w", limit=1, lease_for=30)
    per_stage = await counted_chain(sql_backend, env, job)

    final = await env.get_run(run.run_id)
    assert final.status is RunStatus.COMPLETED
    print(
        f"\n{sql_backend.name} chained: "
        + "; ".join(
            f"stage {i + 1}: {c.commits} tx / {c.statements} stmts" for i, c in enumerate(per_stage)
        )
    )
    assert [c.commits for c in per_stage] == [2, 1, 1]
    assert all(c.statements <= 20 for c in per_stage), per_stage
    # lock, read stages, one write each for stages, run, events, deliveries (+ SQLite BEGIN)
    assert all(c.statements <= 7 for c in per_stage[1:]), per_stage


async def test_a_run_started_at_claim_takes_one_transaction_per_stage(
    sql_backend: Adapters,
) -> None:
    """With the claim's eager dispatch (`take`, the node host) the first stage needs no
    dequeue and no start transaction either: claim, then one transaction per stage."""
    env: TestEnvironment = make_env(sql_backend, [three_stages()])
    run = await env.kernel.dispatch(RunCreate(workflow_id="three", input={"n": 0}))
    with counting(sql_backend) as claim:
        claimed = await env.kernel.dispatch(RunClaimPending(worker_id="w", take=1))
    (job,) = claimed.started_jobs
    per_stage = await counted_chain(sql_backend, env, job)

    assert (await env.get_run(run.run_id)).status is RunStatus.COMPLETED
    print(
        f"\n{sql_backend.name} started at claim: claim {claim.statements} stmts; "
        + "; ".join(f"stage {i + 1}: {c.statements} stmts" for i, c in enumerate(per_stage))
    )
    assert claim.commits == 1
    assert [c.commits for c in per_stage] == [1, 1, 1]
    assert all(c.statements <= 7 for c in per_stage), per_stage


async def test_claiming_runs_reads_nothing_again_per_run(sql_backend: Adapters) -> None:
    """`run.claimPending` locks its runs with the claim itself and does not read them (or
    their stages: a PENDING run has none) again one by one."""
    env: TestEnvironment = make_env(sql_backend, [three_stages()])
    for n in range(10):
        await env.kernel.dispatch(RunCreate(workflow_id="three", input={"n": n}))
    with counting(sql_backend) as claim:
        result = await env.kernel.dispatch(RunClaimPending(limit=10))
    assert len(result.run_ids) == 10
    print(
        f"\n{sql_backend.name}: claiming 10 runs: {claim.commits} tx / {claim.statements} stmts "
        f"{dict(claim.shapes)}"
    )
    assert claim.commits == 1
    # the claim, then one write per table for all ten: stages, runs, events, deliveries, jobs
    assert claim.statements <= 8


async def test_a_run_started_at_creation_takes_one_transaction_then_one_per_stage(
    sql_backend: Adapters,
) -> None:
    """With `RunCreate.worker_id` (an in-process host) the creating transaction also claims
    the run and starts its first stage: no claim, no dequeue, no start transaction."""
    env: TestEnvironment = make_env(sql_backend, [three_stages()])
    with counting(sql_backend) as create:
        created = await env.kernel.dispatch(
            RunCreate(workflow_id="three", input={"n": 0}, worker_id="w")
        )
    (job,) = created.started_jobs
    per_stage = await counted_chain(sql_backend, env, job)

    assert (await env.get_run(created.run_id)).status is RunStatus.COMPLETED
    print(
        f"\n{sql_backend.name} started at creation: run.create {create.commits} tx / "
        f"{create.statements} stmts / {create.trips} trips; "
        + "; ".join(
            f"stage {i + 1}: {c.statements} stmts / {c.trips} trips"
            for i, c in enumerate(per_stage)
        )
    )
    assert create.commits == 1
    assert [c.commits for c in per_stage] == [1, 1, 1]
    # insert the run, then one write each for stages, the run, events, deliveries
    # (+ SQLite BEGIN); nothing is enqueued
    assert create.statements <= 6, create
    assert all(c.statements <= 7 for c in per_stage), per_stage
    # Round trips: PostgreSQL sends BEGIN, the lock-and-read, the writes (one statement) and
    # COMMIT; SQLite's hot path goes to the driver's thread for BEGIN, the reads, and the
    # writes with COMMIT. A creation reads nothing.
    assert create.trips <= 3, create
    assert all(c.trips <= 4 for c in per_stage), per_stage
