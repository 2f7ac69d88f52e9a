"""`Engine` and `SyncEngine`: a URL and workflows in, runs and their results out, on SQLite
and PostgreSQL; a client engine beside a serving one; closing delivers the last events."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from stagewise import (
    Event,
    KernelSettings,
    RetryPolicy,
    RunCancelledError,
    RunFailedError,
    RunFilter,
    RunNotFoundError,
    RunStatus,
    StageContext,
    WorkflowBuilder,
    WorkflowRegistry,
    define_signal_stage,
    define_stage,
)
from stagewise_node import Engine, SyncEngine
from tests.integration.node.support import FAST


def shout(ctx: StageContext) -> str:
    ctx.log("info", "shouting", length=len(str(ctx.input)))
    return str(ctx.input).upper()


async def exclaim(ctx: StageContext) -> str:
    return f"{ctx.input}!"


GREET = (
    WorkflowBuilder("greet")
    .pipe(define_stage(id="shout", execute=shout))
    .pipe(define_stage(id="exclaim", execute=exclaim))
    .build()
)


def boom(ctx: StageContext) -> None:
    raise ValueError(f"no {ctx.input}")


BOOM = (
    WorkflowBuilder("boom")
    .pipe(define_stage(id="boom", execute=boom, retry=RetryPolicy(max_attempts=1)))
    .build()
)


async def wait_for_release(ctx: StageContext) -> str:
    await asyncio.wait_for(ctx.cancelled.wait(), timeout=30)
    return "cancelled"


HOLD = WorkflowBuilder("hold").pipe(define_stage(id="hold", execute=wait_for_release)).build()

BIG = (
    WorkflowBuilder("big")
    .pipe(define_stage(id="big", execute=lambda ctx: "x" * (int(ctx.input) * 1024)))
    .build()
)

ALL = [GREET, BOOM, HOLD, BIG]


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, event: Event) -> None:
        self.events.append(event)


async def test_an_engine_runs_a_workflow_and_returns_its_output(db_url: str) -> None:
    async with Engine(db_url, ALL, settings=FAST) as engine:
        assert await engine.run("greet", "hello") == "HELLO!"
        run_id = await engine.start("greet", "again")
        assert await engine.result(run_id) == "AGAIN!"
        run = await engine.get(run_id)
        assert run is not None and run.status is RunStatus.COMPLETED
        assert (await engine.wait(run_id)).run_id == run_id
        assert await engine.get("no-such-run") is None


async def test_a_failed_run_raises_its_error_and_a_cancelled_one_says_so(db_url: str) -> None:
    async with Engine(db_url, ALL, settings=FAST) as engine:
        with pytest.raises(RunFailedError) as failed:
            await engine.run("boom", "luck")
        assert (failed.value.error_type, failed.value.error_message) == ("ValueError", "no luck")

        run_id = await engine.start("hold")
        assert await engine.cancel(run_id, reason="not needed") is True
        with pytest.raises(RunCancelledError):
            await engine.result(run_id, timeout=10)
        assert await engine.cancel(run_id) is False  # it had ended

        with pytest.raises(RunNotFoundError):
            await engine.result("no-such-run")


async def test_an_output_kept_in_the_blob_store_is_returned_whole(db_url: str) -> None:
    small = KernelSettings(inline_output_bytes=1024)
    async with Engine(db_url, ALL, settings=FAST, kernel_settings=small) as engine:
        run_id = await engine.start("big", 8)
        output = await engine.result(run_id)
        run = await engine.get(run_id)
    assert output == "x" * 8192
    assert run is not None and run.output_ref is not None  # it was in the blob store


async def test_the_same_idempotency_key_starts_one_run_and_a_rerun_resets(db_url: str) -> None:
    async with Engine(db_url, ALL, settings=FAST) as engine:
        first = await engine.start("greet", "once", idempotency_key="k-1")
        again = await engine.start("greet", "once", idempotency_key="k-1")
        assert first == again
        assert await engine.result(first) == "ONCE!"
        assert await engine.rerun(first, "exclaim") == ["exclaim"]
        assert await engine.result(first) == "ONCE!"


async def test_closing_delivers_the_last_events_to_the_sink(db_url: str) -> None:
    sink = Sink()
    async with Engine(db_url, ALL, settings=FAST, event_sink=sink) as engine:
        run_id = await engine.start("greet", "flush")
        await engine.result(run_id)
    types = [e.type for e in sink.events if e.run_id == run_id]
    assert types[-1] == "run.completed"
    assert types.count("stage.completed") == 2


async def test_a_client_engine_starts_runs_that_a_serving_engine_executes(db_url: str) -> None:
    async with Engine(db_url, ALL, settings=FAST) as serving:
        async with Engine(db_url, ALL, worker=False) as client:
            assert client.host is None and serving.host is not None
            run_id = await client.start("greet", "from afar")
            assert await client.result(run_id, timeout=20) == "FROM AFAR!"
        run = await serving.get(run_id)
        assert run is not None and run.status is RunStatus.COMPLETED


async def test_workflows_may_be_one_several_or_a_registry(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    for workflows in (GREET, [GREET], WorkflowRegistry([GREET])):
        async with Engine(url, workflows, settings=FAST) as engine:
            assert await engine.run("greet", "x") == "X!"
    with pytest.raises(TypeError, match="Workflow objects, got str"):
        Engine(url, ["greet"])  # type: ignore[list-item]


async def test_an_engine_not_open_says_so(tmp_path: Any) -> None:
    engine = Engine(f"sqlite:///{tmp_path / 'x.db'}", GREET)
    with pytest.raises(RuntimeError, match="not open"):
        await engine.start("greet")
    await engine.close()  # closing what never opened is fine
    async with engine:
        with pytest.raises(RuntimeError, match="open already"):
            await engine.open()
    await engine.close()  # and closing twice


def test_a_sync_engine_runs_without_an_event_loop(db_url: str) -> None:
    with SyncEngine(db_url, ALL, settings=FAST) as engine:
        assert engine.run("greet", "sync") == "SYNC!"
        run_id = engine.start("boom", "way")
        with pytest.raises(RunFailedError, match="no way"):
            engine.result(run_id)
        assert engine.wait(run_id).status is RunStatus.FAILED
        held = engine.start("hold")
        assert engine.cancel(held) is True
        assert engine.call(engine.kernel.get_run(held)) is not None
    with pytest.raises(RuntimeError, match="not open"):
        engine.get(held)


async def test_a_sync_engine_works_where_an_event_loop_already_runs(tmp_path: Any) -> None:
    # As in a notebook: this test's own loop is running (and blocked while the call waits).
    with SyncEngine(f"sqlite:///{tmp_path / 'nb.db'}", GREET, settings=FAST) as engine:
        assert engine.run("greet", "notebook") == "NOTEBOOK!"


async def test_an_engine_lists_runs_by_label_and_reads_their_logs(db_url: str) -> None:
    async with Engine(db_url, ALL, settings=FAST) as engine:
        mine = await engine.start("greet", "a", metadata={"team": "blue"})
        await engine.start("greet", "b", metadata={"team": "red"})
        await engine.result(mine)
        page = await engine.list_runs(RunFilter(metadata={"team": "blue"}))
        assert [r.run_id for r in page.runs] == [mine] and page.next_cursor is None
        first = await engine.list_runs(limit=1)
        second = await engine.list_runs(limit=1, cursor=first.next_cursor)
        assert len(first.runs) == len(second.runs) == 1
        assert first.runs[0].run_id != second.runs[0].run_id
        logs = await engine.logs(mine)
        assert [(line.stage_id, line.message) for line in logs.lines] == [("shout", "shouting")]
        assert (await engine.logs(mine, after=logs.next_after)).lines == []


async def test_a_run_started_with_a_deadline_fails_when_it_passes(db_url: str) -> None:
    # The stage holds until it is told to stop; the deadline tells it, through maintenance
    # on the engine's own host, woken by the deadline's hint (its fallback is 5 s).
    async with Engine(db_url, ALL, settings=FAST) as engine:
        deadline = engine.kernel.clock.now() + timedelta(seconds=1)
        run_id = await engine.start("hold", deadline=deadline)
        with pytest.raises(RunFailedError, match="DeadlineExceededError"):
            await engine.result(run_id, timeout=20)
        run = await engine.get(run_id)
        assert run is not None and run.deadline == deadline


async def test_a_client_reads_what_a_run_publishes_and_signals_it(db_url: str) -> None:
    # A human-in-the-loop flow: the run publishes a question, the client reads it (waiting
    # for it), answers with a signal, and reads the result.
    async def ask(ctx: StageContext) -> None:
        ctx.set_event("question", "ship it?")

    flow = (
        WorkflowBuilder("ask")
        .pipe(define_stage(id="ask", execute=ask))
        .pipe(define_signal_stage(id="answer", topic="answer"))
        .build()
    )
    async with Engine(db_url, [flow], settings=FAST) as engine:
        run_id = await engine.start("ask")
        assert await engine.get_event(run_id, "question", timeout=20) == "ship it?"
        # Taken at once if the wait has begun, else kept until it begins: the same result.
        assert await engine.signal(run_id, "answer", "yes") in ("answer", None)
        assert await engine.result(run_id, timeout=20) == "yes"


async def _chatter(ctx: StageContext) -> str:
    for word in ("durable", "streams"):
        await ctx.write_stream("words", word)
    return "said"


CHATTER = WorkflowBuilder("chatter").pipe(define_stage(id="say", execute=_chatter)).build()


async def test_a_client_follows_a_runs_stream(db_url: str) -> None:
    async with Engine(db_url, [CHATTER], settings=FAST) as engine:
        run_id = await engine.start("chatter")
        words = [item.value async for item in engine.read_stream(run_id, "words")]
        assert words == ["durable", "streams"]  # never closed: it ends with the run
        assert await engine.result(run_id, timeout=20) == "said"


def test_a_sync_client_follows_a_runs_stream(db_url: str) -> None:
    with SyncEngine(db_url, [CHATTER], settings=FAST) as engine:
        run_id = engine.start("chatter")
        assert [i.value for i in engine.read_stream(run_id, "words", offset=1)] == ["streams"]
