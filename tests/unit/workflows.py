"""Workflows shared by the kernel's unit tests."""

from __future__ import annotations

from pydantic import BaseModel

from stagewise import StageContext, WorkflowBuilder, define_stage


class Num(BaseModel):
    n: int


def inc(ctx: StageContext) -> Num:  # sync: runs on the thread pool
    return Num(n=ctx.input.n + 1)


async def double(ctx: StageContext) -> Num:
    return Num(n=ctx.input.n * 2)


async def add_branches(ctx: StageContext) -> Num:
    return Num(n=ctx.input["left"]["n"] + ctx.input["right"]["n"])


def four_groups() -> object:
    """n -> start(+1) -> [left(+1), right(*2)] -> join(left+right) -> finish(+1)."""
    return (
        WorkflowBuilder("four", input=Num, output=Num)
        .pipe(define_stage(id="start", input=Num, output=Num, execute=inc))
        .parallel(
            [
                define_stage(id="left", input=Num, output=Num, execute=inc),
                define_stage(id="right", input=Num, output=Num, execute=double),
            ]
        )
        .pipe(define_stage(id="join", output=Num, execute=add_branches))
        .pipe(define_stage(id="finish", input=Num, output=Num, execute=inc))
        .build()
    )
