"""What `stagewise runs show` and `runs list` print: notes kept apart, errors whole, local
times with their offset (or UTC), PENDING stages without attempt or start, the cancel
reason, and no control character of user text sent raw to the terminal.

The runs are made on the CLI's SQLite file by a kernel in this process on a FakeClock
(`TestEnvironment` on the SQL adapters), so their times are known.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stagewise import (
    JobExecute,
    NotReady,
    RetryPolicy,
    RunCancel,
    RunClaimPending,
    RunRerunFrom,
    StageContext,
    Suspend,
    WorkflowBuilder,
    define_async_batch_stage,
    define_signal_stage,
    define_sleep_stage,
    define_stage,
)
from stagewise.testing import FakeClock, TestEnvironment
from stagewise_sql import SqlBackend
from tests.integration.node.cli_support import run_id_in, stagewise

ESCAPES = "\x1b[2J\x1b]0;pwned\x07\x9b31m"
LONG = " ".join(f"word{i}" for i in range(30)) + " END-OF-MESSAGE"


def failing(error: type[Exception], message: str) -> Callable[[StageContext], None]:
    def execute(ctx: StageContext) -> None:
        ctx.progress(50, "service")
        raise error(message)

    return execute


async def waits(ctx: StageContext) -> Suspend:
    ctx.progress(10, "service")
    return Suspend(state={}, poll_interval=3600, max_wait=86_400)


workflows = [
    WorkflowBuilder("fails")
    .pipe(
        define_stage(id="flaky", execute=failing(KeyError, "x"), retry=RetryPolicy(max_attempts=2)),
    )
    .build(),
    WorkflowBuilder("long-error")
    .pipe(
        define_stage(id="s", execute=failing(ValueError, LONG), retry=RetryPolicy(max_attempts=1))
    )
    .build(),
    WorkflowBuilder("hostile")
    .pipe(
        define_stage(
            id="s",
            execute=failing(ValueError, f"bad{ESCAPES}\nnext"),
            retry=RetryPolicy(max_attempts=1),
        ),
    )
    .build(),
    WorkflowBuilder("waits")
    .pipe(define_async_batch_stage(id="w", execute=waits, check_completion=lambda s, c: NotReady()))
    .pipe(define_stage(id="after", execute=lambda ctx: None))
    .build(),
    WorkflowBuilder("asks")
    .pipe(define_signal_stage(id="ok", topic="approval", timeout=timedelta(hours=2)))
    .build(),
    WorkflowBuilder("sleeps", timeout=timedelta(days=3))
    .pipe(define_sleep_stage(id="nap", duration=timedelta(days=2)))
    .pipe(define_stage(id="after", execute=lambda ctx: None))
    .build(),
]
START = datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC)


def on_the_database(db: str, act: Callable[[TestEnvironment], Awaitable[Any]]) -> Any:
    """Run `act` with a kernel on the CLI's database, on a FakeClock at `START`."""

    async def main() -> Any:
        clock = FakeClock(START)
        backend = await SqlBackend.connect(db, clock=clock)
        env = TestEnvironment(
            workflows,
            clock=clock,
            persistence=backend.persistence,
            job_transport=backend.job_transport,
            blob_store=backend.blob_store,
        )
        try:
            return await act(env)
        finally:
            await env.kernel.aclose()
            await backend.close()

    return asyncio.run(main())


async def finished_run(env: TestEnvironment, workflow_id: str) -> str:
    run_id = await env.create_run(workflow_id)
    await env.run_until_idle()
    return run_id


@pytest.fixture
def kolkata(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The local zone is UTC+05:30 (no daylight saving time)."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_notes_are_kept_apart_and_a_failure_is_not_repeated(db: str) -> None:
    run_id = on_the_database(db, lambda env: finished_run(env, "fails"))
    code, out = stagewise("runs", "show", run_id, "--db", db)
    assert code == 0, out
    assert "1 retry; KeyError: 'x'" in out
    assert "'x''x'" not in out
    assert "1 retry, last" not in out  # the final error says it


def waiting(workflow_id: str) -> Callable[[TestEnvironment], Awaitable[str]]:
    """A run of `workflow_id` claimed and its first group's jobs run: it waits."""

    async def start(env: TestEnvironment) -> str:
        run_id = await env.create_run(workflow_id)
        await env.kernel.dispatch(RunClaimPending(limit=1))
        for job in await env.queue.dequeue(worker_id="t", limit=5, lease_for=30):
            await env.kernel.dispatch(JobExecute(job=job, worker_id="t"))
        return run_id

    return start


def test_a_suspended_stage_shows_progress_then_its_wait(db: str, kolkata: None) -> None:
    run_id = on_the_database(db, waiting("waits"))
    code, out = stagewise("runs", "show", run_id, "--db", db)
    assert code == 0, out
    assert "10% service; waiting; next check 2026-07-01 18:30:00.000 +05:30" in out
    assert "servicewaiting" not in out


def test_a_sleeping_stage_says_until_when(db: str, kolkata: None) -> None:
    run_id = on_the_database(db, waiting("sleeps"))
    code, out = stagewise("runs", "show", run_id, "--db", db)
    assert code == 0, out
    assert "sleeping until 2026-07-03 17:30:00.000 +05:30" in out
    assert "deadline  2026-07-04 17:30:00.000 +05:30" in out


def test_a_signal_wait_says_its_topic_since_when_and_its_timeout(db: str, kolkata: None) -> None:
    run_id = on_the_database(db, waiting("asks"))
    code, out = stagewise("runs", "show", run_id, "--db", db)
    assert code == 0, out
    # (the note may wrap in its column)
    assert "waiting for signal 'approval' since 2026-07-01 17:30:00.000 +05:30; times" in out
    assert "2026-07-01 19:30:00.000 +05:30" in out


def test_pending_stages_show_no_attempt_and_no_start(db: str) -> None:
    async def claimed(env: TestEnvironment) -> str:
        run_id = await env.create_run("fails")
        await env.kernel.dispatch(RunClaimPending(limit=1))  # stage rows, none started
        return run_id

    run_id = on_the_database(db, claimed)
    code, out = stagewise("runs", "show", run_id, "--db", db)
    assert code == 0, out
    row = next(line for line in out.splitlines() if "flaky" in line)
    assert "PENDING" in row
    cells = [c.strip() for c in row.split("│")]
    assert cells[4:7] == ["-", "-", "-"], row  # attempts, started, duration


def test_errors_are_shown_whole_when_there_is_room(db: str) -> None:
    run_id = on_the_database(db, lambda env: finished_run(env, "long-error"))
    for command in (("runs", "show", run_id), ("runs", "list")):
        code, out = stagewise(*command, "--db", db)
        assert code == 0, out
        assert "END-OF-MESSAGE" in out, out
        assert "…" not in out


def test_times_are_local_with_their_offset_or_utc(db: str, kolkata: None) -> None:
    run_id = on_the_database(db, lambda env: finished_run(env, "fails"))
    code, out = stagewise("runs", "show", run_id, "--db", db)
    assert "created   2026-07-01 17:30:00.000 +05:30" in out
    assert "started (+05:30)" in out
    code, out = stagewise("runs", "list", "--db", db)
    assert "created (+05:30)" in out
    assert "07-01 17:30:00" in out
    code, out = stagewise("runs", "show", run_id, "--db", db, "--utc")
    assert "created   2026-07-01 12:00:00.000 UTC" in out
    assert "started (UTC)" in out
    code, out = stagewise("runs", "list", "--db", db, "--utc")
    assert "created (UTC)" in out
    assert "07-01 12:00:00" in out


def test_the_status_filter_takes_any_case(db: str) -> None:
    run_id = on_the_database(db, lambda env: finished_run(env, "fails"))
    for given in ("failed", "Failed", "FAILED"):
        code, out = stagewise("runs", "list", "--status", given, "--db", db)
        assert code == 0, out
        assert run_id in out
    code, out = stagewise("runs", "list", "--status", "completed", "--db", db)
    assert run_id not in out


def test_the_cancel_reason_is_shown(db: str) -> None:
    async def cancelled(env: TestEnvironment) -> str:
        run_id = await env.create_run("fails")
        await env.kernel.dispatch(RunCancel(run_id=run_id, reason="customer asked"))
        return run_id

    run_id = on_the_database(db, cancelled)
    code, out = stagewise("runs", "show", run_id, "--db", db)
    assert code == 0, out
    assert "reason    customer asked" in out
    code, out = stagewise("runs", "show", run_id, "--json", "--db", db)
    assert json.loads(out)["cancel_reason"] == "customer asked"
    code, out = stagewise("run", "fails", "--db", db, "--app", f"{__name__}:workflows")
    other = run_id_in(out)
    code, out = stagewise("runs", "cancel", other, "--reason", "from the CLI", "--db", db)
    assert code == 0, out
    code, out = stagewise("runs", "show", other, "--json", "--db", db)
    assert json.loads(out)["cancel_reason"] == "from the CLI"


def test_control_characters_of_user_text_are_escaped(db: str) -> None:
    run_id = on_the_database(db, lambda env: finished_run(env, "hostile"))
    code, out = stagewise("runs", "show", run_id, "--db", db)
    assert code == 0, out
    assert "bad\\x1b[2J\\x1b]0;pwned\\x07\\x9b31m" in out
    code, listed = stagewise("runs", "list", "--db", db)
    assert "bad\\x1b[2J" in listed
    assert "\\nnext" in listed  # one row: the newline is escaped too
    code, as_json = stagewise("runs", "show", run_id, "--json", "--db", db)
    assert json.loads(as_json)["error"]["message"] == f"bad{ESCAPES}\nnext"
    for output in (out, listed, as_json):
        assert "\x1b" not in output
        assert "\x07" not in output
        assert "\x9b" not in output


def test_attempts_of_a_cancelled_then_rerun_stage_each_have_an_end_and_a_number(db: str) -> None:
    async def execute_what_is_queued(env: TestEnvironment) -> None:
        for job in await env.queue.dequeue(worker_id="t", limit=5, lease_for=30):
            await env.kernel.dispatch(JobExecute(job=job, worker_id="t"))

    async def cancelled_then_rerun(env: TestEnvironment) -> str:
        run_id = await env.create_run("waits")
        await env.kernel.dispatch(RunClaimPending(limit=1))
        await execute_what_is_queued(env)  # w suspends (attempt 1)
        await env.kernel.dispatch(RunCancel(run_id=run_id, reason="wrong input"))
        await env.kernel.dispatch(RunRerunFrom(run_id=run_id, stage_id="w"))
        await execute_what_is_queued(env)  # w suspends again (attempt 2)
        return run_id

    run_id = on_the_database(db, cancelled_then_rerun)
    code, out = stagewise("runs", "show", run_id, "--json", "--db", db)
    assert code == 0, out
    attempts = [(a["stage_id"], a["attempt"], a["outcome"]) for a in json.loads(out)["attempts"]]
    assert attempts == [("w", 1, "cancelled"), ("w", 2, "suspended")]
    code, out = stagewise("runs", "show", run_id, "--db", db)
    assert code == 0, out
    assert "running" not in out
