"""The deploy scenario's workflow, `deploy`, in the plans `$DEPLOY_PLANS` names (comma-
separated, registered in that order: the last is the newest, which new runs take).

    v1: a -> b -> c          renamed: a -> x -> c
    removed: a -> c          inserted: a -> b -> x -> c

Each stage adds one to `n` and records its execution in the side table, like `flows.three`
(the input may make one stage slow in its first attempt: {"n": 0, "slow": "b", "sleep": 3}).
"""

from __future__ import annotations

import asyncio
import os

from stagewise import StageContext, Workflow, WorkflowBuilder, WorkflowRegistry, define_stage
from tests.integration.node.flows import Step, record_end, record_start

PLANS_ENV = "DEPLOY_PLANS"
PLANS = {
    "v1": ["a", "b", "c"],
    "renamed": ["a", "x", "c"],
    "removed": ["a", "c"],
    "inserted": ["a", "b", "x", "c"],
}


async def step(ctx: StageContext) -> Step:
    row = await asyncio.to_thread(record_start, ctx)
    given: Step = ctx.input
    if given.slow == ctx.stage_id and ctx.attempt == 1:
        await asyncio.sleep(given.sleep)
    await asyncio.to_thread(record_end, row)
    return given.model_copy(update={"n": given.n + 1})


def plan(name: str) -> Workflow:
    builder = WorkflowBuilder("deploy", input=Step, output=Step)
    for stage in PLANS[name]:
        builder.pipe(define_stage(id=stage, input=Step, output=Step, execute=step))
    return builder.build()


workflows = WorkflowRegistry([plan(n) for n in os.environ.get(PLANS_ENV, "v1").split(",")])
