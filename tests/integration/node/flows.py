"""Workflows the worker processes of the node tests serve.

Every stage records each execution in a side table (a SQLite file named by
`$NODE_TEST_SIDE_DB`, apart from the database under test) before it does anything else, so
that a test can count how many times each stage ran, in which process, even across SIGKILL.

    three: a -> b -> c, each adds one to `n` (async stages). The input may make one stage
    slow: {"n": 0, "slow": "b", "sleep": 3.0} sleeps 3 s in stage b.
    three-sync: the same with blocking `def` stages (they run on the thread pool).
    nap: a -> a durable sleep of 4 s -> c (for workers killed while their runs sleep).
    approve: a signal stage waiting on topic "approval" (an Approval) -> who approved.
    talk: streams three tokens on "tokens" (one with a terminal escape), closes it, and
        publishes "answer".
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

from pydantic import BaseModel

from stagewise import (
    StageContext,
    WorkflowBuilder,
    define_signal_stage,
    define_sleep_stage,
    define_stage,
)

SIDE_DB_ENV = "NODE_TEST_SIDE_DB"

_SCHEMA = """
CREATE TABLE executions (
    run_id TEXT NOT NULL, stage_id TEXT NOT NULL, attempt INTEGER NOT NULL,
    pid INTEGER NOT NULL, started REAL NOT NULL, finished REAL
)
"""


def create_side_db(path: str | os.PathLike[str]) -> None:
    """Create the side database, once, before any process uses it.

    WAL is a property of the file, so it is set here only. Switching the journal mode needs
    a lock of its own, which SQLite may refuse at once (SQLITE_BUSY) rather than wait for
    through the busy timeout: a `PRAGMA journal_mode=WAL` on every connection, with several
    worker processes opening and closing theirs, now and then failed a stage with
    "database is locked".
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)
    finally:
        conn.close()


def side_db(path: str | None = None) -> sqlite3.Connection:
    """A connection to the side database (made by `create_side_db`)."""
    conn = sqlite3.connect(path or os.environ[SIDE_DB_ENV], timeout=30, isolation_level=None)
    conn.execute("PRAGMA synchronous=NORMAL")  # per connection; survives SIGKILL, no fsync
    return conn


def record_start(ctx: StageContext) -> int:
    conn = side_db()
    try:
        cur = conn.execute(
            "INSERT INTO executions (run_id, stage_id, attempt, pid, started) "
            "VALUES (?, ?, ?, ?, ?)",
            (ctx.run_id, ctx.stage_id, ctx.attempt, os.getpid(), time.time()),
        )
    finally:
        conn.close()
    assert cur.lastrowid is not None
    return cur.lastrowid


def record_end(row: int) -> None:
    conn = side_db()
    try:
        conn.execute("UPDATE executions SET finished = ? WHERE rowid = ?", (time.time(), row))
    finally:
        conn.close()


class Step(BaseModel):
    n: int
    slow: str | None = None
    sleep: float = 0.0


def _next(ctx: StageContext) -> Step:
    return ctx.input.model_copy(update={"n": ctx.input.n + 1})


def _slow_here(ctx: StageContext) -> float:
    step: Step = ctx.input
    return step.sleep if step.slow == ctx.stage_id else 0.0


async def step_async(ctx: StageContext) -> Step:
    row = await asyncio.to_thread(record_start, ctx)
    if _slow_here(ctx):
        await asyncio.sleep(_slow_here(ctx))
    await asyncio.to_thread(record_end, row)
    return _next(ctx)


def step_sync(ctx: StageContext) -> Step:  # a blocking def: runs on the thread pool
    row = record_start(ctx)
    time.sleep(_slow_here(ctx))
    record_end(row)
    return _next(ctx)


three = (
    WorkflowBuilder("three", input=Step, output=Step)
    .pipe(define_stage(id="a", input=Step, output=Step, execute=step_async))
    .pipe(define_stage(id="b", input=Step, output=Step, execute=step_async))
    .pipe(define_stage(id="c", input=Step, output=Step, execute=step_async))
    .build()
)

three_sync = (
    WorkflowBuilder("three-sync", input=Step, output=Step)
    .pipe(define_stage(id="a", input=Step, output=Step, execute=step_sync))
    .pipe(define_stage(id="b", input=Step, output=Step, execute=step_sync))
    .pipe(define_stage(id="c", input=Step, output=Step, execute=step_sync))
    .build()
)

nap = (
    WorkflowBuilder("nap", input=Step, output=Step)
    .pipe(define_stage(id="a", input=Step, output=Step, execute=step_async))
    .pipe(define_sleep_stage(id="nap", duration=4))
    .pipe(define_stage(id="c", input=Step, output=Step, execute=step_async))
    .build()
)


class Approval(BaseModel):
    approved: bool
    by: str


approve = (
    WorkflowBuilder("approve")
    .pipe(define_signal_stage(id="approval", topic="approval", payload=Approval))
    .pipe(define_stage(id="who", execute=lambda ctx: ctx.input["by"]))
    .build()
)


async def _speak(ctx: StageContext) -> str:
    for token in ("Hel", "lo", "\x1b[2J!"):  # the CLI must show the escape, not send it
        await ctx.write_stream("tokens", token)
    ctx.close_stream("tokens")
    ctx.set_event("answer", {"text": "Hello!"})
    return "said"


talk = WorkflowBuilder("talk").pipe(define_stage(id="speak", execute=_speak)).build()

workflows = [three, three_sync, nap, approve, talk]
