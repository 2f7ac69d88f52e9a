"""Workflows that write log lines, for `stagewise runs logs`.

chatty: a -> b -> c, each logs a line or two; b first waits until the file named by
`$LOG_FLOWS_GATE` exists (when that is set), so a test can watch a follower print a's
lines while the run is still going.
chatty-fails: one stage that logs, then fails for good.
"""

from __future__ import annotations

import os
import time

from stagewise import RetryPolicy, StageContext, WorkflowBuilder, define_stage

GATE_ENV = "LOG_FLOWS_GATE"


async def _a(ctx: StageContext) -> int:
    ctx.log("info", "a says hi", n=1, who="alice")
    ctx.log("warning", "sneaky \x1b[2J\nforged line", path="x\x9by")
    return 1


def _b(ctx: StageContext) -> int:  # a blocking def: it runs on the thread pool
    gate = os.environ.get(GATE_ENV)
    deadline = time.monotonic() + 60
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    ctx.log("info", "b went through", gate=bool(gate))
    return 2


async def _c(ctx: StageContext) -> int:
    ctx.log("debug", "c is last")
    return 3


async def _fails(ctx: StageContext) -> int:
    ctx.log("error", "about to fail")
    raise ValueError("it broke")


chatty = (
    WorkflowBuilder("chatty")
    .pipe(define_stage(id="a", execute=_a))
    .pipe(define_stage(id="b", execute=_b))
    .pipe(define_stage(id="c", execute=_c))
    .build()
)
chatty_fails = (
    WorkflowBuilder("chatty-fails")
    .pipe(define_stage(id="x", execute=_fails, retry=RetryPolicy(max_attempts=1)))
    .build()
)

workflows = [chatty, chatty_fails]
