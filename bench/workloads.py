"""The workflows the benchmark's worker processes serve (`workloads:workflows`).

bench-three      a -> b -> c, each returns input + 1 (W1 throughput, W2 latency)
bench-fanout-N   N parallel stages returning input + i, then `sum` adds their outputs (W3)
bench-recovery   like bench-three, but b sleeps 0.2 s; every stage body that finishes
                 appends "run_id stage_id attempt pid" to $BENCH_EXEC_LOG (W4), so the
                 runner can count bodies that executed more than once across a SIGKILL
bench-nap        a -> a durable sleep of NAP_SECONDS -> c (sleep wake-up lateness)
bench-sleeper    a 30-day sleep (the sleeping backlog W1 runs beside)
bench-approve    a signal stage on topic "go", then a stage (signal-to-next-stage latency)
bench-stream     one stage writes STREAM_ITEMS items to stream "ticks", each the wall-clock
                 time just before its write, STREAM_GAP seconds apart (stream latency)
"""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import BaseModel

from stagewise import (
    StageContext,
    WorkflowBuilder,
    define_signal_stage,
    define_sleep_stage,
    define_stage,
)

EXEC_LOG_ENV = "BENCH_EXEC_LOG"
NAP_SECONDS = 2.0
FANOUT_SIZES = (50, 200)


class Num(BaseModel):
    n: int


async def inc(ctx: StageContext) -> Num:
    return Num(n=ctx.input.n + 1)


def _record(ctx: StageContext) -> None:
    path = os.environ.get(EXEC_LOG_ENV)
    if not path:
        return
    line = f"{ctx.run_id} {ctx.stage_id} {ctx.attempt} {os.getpid()}\n".encode()
    # One write(2) on an O_APPEND file: atomic for a short line, and in the page cache
    # (so it survives SIGKILL of this process) as soon as the call returns.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


async def inc_recorded(ctx: StageContext) -> Num:
    out = Num(n=ctx.input.n + 1)
    _record(ctx)
    return out


async def slow_inc_recorded(ctx: StageContext) -> Num:
    await asyncio.sleep(0.2)
    out = Num(n=ctx.input.n + 1)
    _record(ctx)
    return out


async def total(ctx: StageContext) -> Num:
    return Num(n=sum(v["n"] for v in ctx.input.values()))


def _three() -> object:
    builder = WorkflowBuilder("bench-three", input=Num, output=Num)
    for sid in ("a", "b", "c"):
        builder.pipe(define_stage(id=sid, input=Num, output=Num, execute=inc))
    return builder.build()


def _fanout(size: int) -> object:
    stages = [define_stage(id=f"p{i:03d}", input=Num, output=Num, execute=inc) for i in range(size)]
    return (
        WorkflowBuilder(f"bench-fanout-{size}", input=Num, output=Num)
        .parallel(stages)
        .pipe(define_stage(id="sum", output=Num, execute=total))
        .build()
    )


def _recovery() -> object:
    return (
        WorkflowBuilder("bench-recovery", input=Num, output=Num)
        .pipe(define_stage(id="a", input=Num, output=Num, execute=inc_recorded))
        .pipe(define_stage(id="b", input=Num, output=Num, execute=slow_inc_recorded))
        .pipe(define_stage(id="c", input=Num, output=Num, execute=inc_recorded))
        .build()
    )


def _nap() -> object:
    return (
        WorkflowBuilder("bench-nap", input=Num, output=Num)
        .pipe(define_stage(id="a", input=Num, output=Num, execute=inc))
        .pipe(define_sleep_stage(id="nap", duration=NAP_SECONDS))
        .pipe(define_stage(id="c", input=Num, output=Num, execute=inc))
        .build()
    )


def _sleeper() -> object:
    return (
        WorkflowBuilder("bench-sleeper")
        .pipe(define_sleep_stage(id="nap", duration=30 * 86400))
        .build()
    )


def _approve() -> object:
    return (
        WorkflowBuilder("bench-approve")
        .pipe(define_signal_stage(id="wait", topic="go"))
        .pipe(define_stage(id="after", execute=lambda ctx: ctx.input))
        .build()
    )


STREAM_ITEMS = int(os.environ.get("BENCH_STREAM_ITEMS", "200"))
STREAM_GAP = float(os.environ.get("BENCH_STREAM_GAP", "0.01"))


async def _tick(ctx: StageContext) -> int:
    for _ in range(STREAM_ITEMS):
        await ctx.write_stream("ticks", time.time())
        await asyncio.sleep(STREAM_GAP)
    ctx.close_stream("ticks")
    return STREAM_ITEMS


def _stream() -> object:
    return WorkflowBuilder("bench-stream").pipe(define_stage(id="tick", execute=_tick)).build()


workflows = [
    _three(),
    *(_fanout(n) for n in FANOUT_SIZES),
    _recovery(),
    _nap(),
    _sleeper(),
    _approve(),
    _stream(),
]
