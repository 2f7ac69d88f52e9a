"""Reading runs and logs on every backend: the filters of `RunStore.find` alone and
together, keyset pages that hold while runs are created, exact metadata matches, and a
run's log read in order and resumed from a line's id with no gap and no repeat."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from stagewise import (
    InvalidCommandError,
    InvalidCursorError,
    RetryPolicy,
    RunCreate,
    RunFilter,
    RunNotFoundError,
    RunStatus,
    StageContext,
    WorkflowBuilder,
    define_stage,
)
from stagewise._records import Changeset, LogRecord, RunRecord
from stagewise.testing import TestEnvironment
from tests.conftest import Adapters
from tests.contract.factories import at, log, run
from tests.contract.test_kernel_scenarios import make_env

C, F, R, P = RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.RUNNING, RunStatus.PENDING


def finished(
    run_id: str, status: RunStatus, created: float, done: float | None, **kw: Any
) -> RunRecord:
    return run(
        run_id, status=status, created=created, finished_at=None if done is None else at(done), **kw
    )


RUNS = (
    finished(
        "a",
        C,
        1,
        10,
        workflow_id="wf1",
        workflow_version="v1",
        metadata={"team": "x", "env": "prod"},
    ),
    finished("b", F, 2, 20, workflow_id="wf2", workflow_version="v1", metadata={"team": "y"}),
    finished("c", R, 3, None, workflow_id="wf1", workflow_version="v2", metadata={"team": "x"}),
    finished("d", P, 3, None, workflow_id="wf1"),
    finished("e", C, 4, 5, workflow_id="wf2", metadata={"env": "prod", "team": "x"}),
)
"""Newest first: e (4), then d and c (both at 3: by id, descending), b, a."""

FILTERS: list[tuple[str, RunFilter, str]] = [
    ("none", RunFilter(), "edcba"),
    ("status", RunFilter(status=C), "ea"),
    ("status in any case", RunFilter(status="failed"), "b"),
    ("workflow", RunFilter(workflow_id="wf1"), "dca"),
    ("version", RunFilter(workflow_version="v1"), "ba"),
    ("created at or after", RunFilter(created_after=at(3)), "edc"),
    ("created before", RunFilter(created_before=at(3)), "ba"),
    ("created in a range", RunFilter(created_after=at(2), created_before=at(4)), "dcb"),
    ("finished at or after", RunFilter(finished_after=at(10)), "ba"),
    ("finished before", RunFilter(finished_before=at(10)), "e"),
    ("finished at all", RunFilter(finished_after=at(0)), "eba"),
    ("one label", RunFilter(metadata={"team": "x"}), "eca"),
    ("two labels", RunFilter(metadata={"team": "x", "env": "prod"}), "ea"),
    ("a label's other value", RunFilter(metadata={"env": "staging"}), ""),
    ("a key no run has", RunFilter(metadata={"absent": "x"}), ""),
    ("an empty value is not an absent key", RunFilter(metadata={"env": ""}), ""),
    (
        "status, labels and time",
        RunFilter(status="COMPLETED", metadata={"team": "x"}, created_before=at(4)),
        "a",
    ),
    ("workflow and finished", RunFilter(workflow_id="wf1", finished_after=at(0)), "a"),
    ("version and label", RunFilter(workflow_version="v2", metadata={"team": "x"}), "c"),
]


async def insert_runs(backend: Adapters, *runs: RunRecord) -> None:
    async with backend.persistence.transaction() as tx:
        await tx.apply(Changeset(new_runs=runs))


async def find(backend: Adapters, where: RunFilter, **kwargs: Any) -> list[RunRecord]:
    async with backend.persistence.transaction() as tx:
        return await tx.runs.find(where, **kwargs)


@pytest.mark.parametrize(
    ("where", "expected"), [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS]
)
async def test_find_keeps_the_runs_that_pass_every_filter_newest_first(
    backend: Adapters, where: RunFilter, expected: str
) -> None:
    await insert_runs(backend, *RUNS)
    found = await find(backend, where)
    assert "".join(r.run_id for r in found) == expected
    assert found == [r for r in sorted(RUNS, key=_key, reverse=True) if where.matches(r)]


def _key(r: RunRecord) -> tuple[datetime, str]:
    return (r.created_at, r.run_id)


async def test_a_run_comes_back_with_its_metadata_and_labels_match_as_exact_text(
    backend: Adapters,
) -> None:
    odd = {"note": 'he said "hi" \\ ü 😀', "n": "1", "path/of:it": "a.b-c"}
    await insert_runs(backend, run("odd", metadata=odd), run("num", metadata={"n": "01"}))

    async with backend.persistence.transaction() as tx:
        assert (await tx.runs.get("odd")) == run("odd", metadata=odd)
        assert (await tx.runs.get("num")) == run("num", metadata={"n": "01"})
    assert [r.run_id for r in await find(backend, RunFilter(metadata=odd))] == ["odd"]
    assert [r.run_id for r in await find(backend, RunFilter(metadata={"n": "1"}))] == ["odd"]
    assert [r.run_id for r in await find(backend, RunFilter(metadata={"n": "01"}))] == ["num"]
    assert await find(backend, RunFilter(metadata={"note": "he said"})) == []


async def test_keyset_pages_list_every_run_once_while_runs_are_created_between_them(
    backend: Adapters,
) -> None:
    # 23 runs, several created in the same instant (ties are broken by id).
    there = [run(f"r{i:02d}", created=i // 3) for i in range(23)]
    await insert_runs(backend, *there)
    seen: list[str] = []
    before: tuple[datetime, str] | None = None
    for page_no in range(20):
        page = await find(backend, RunFilter(), before=before, limit=4)
        seen += [r.run_id for r in page]
        if len(page) < 4:
            break
        before = _key(page[-1])
        # newer runs, and one created in the same instant as the page's last run but with an
        # id above it: all of them sort before the cursor, so no later page shows them
        await insert_runs(
            backend,
            run(f"new{page_no:02d}", created=100 + page_no),
            run(f"{page[-1].run_id}z", created=(page[-1].created_at - at(0)).total_seconds()),
        )
    assert seen == [r.run_id for r in sorted(there, key=_key, reverse=True)]


async def test_keyset_pages_keep_to_the_filter(backend: Adapters) -> None:
    await insert_runs(backend, *RUNS)
    where = RunFilter(metadata={"team": "x"})
    first = await find(backend, where, limit=2)
    rest = await find(backend, where, before=_key(first[-1]), limit=2)
    assert [r.run_id for r in first] == ["e", "c"]
    assert [r.run_id for r in rest] == ["a"]


# --- the kernel's listing ----------------------------------------------------------------


def labelled_flow() -> Any:
    return WorkflowBuilder("lab").pipe(define_stage(id="s", execute=lambda c: 1)).build()


async def test_the_kernels_cursor_walks_every_run_once_while_more_are_created(
    backend: Adapters,
) -> None:
    env = make_env(backend, [labelled_flow()])
    made = []
    for i in range(7):
        made.append(await env.create_run("lab", metadata={"batch": "one", "i": str(i)}))
        if i % 3 == 0:
            backend.clock.advance(1)  # some apart, some in the same instant
    where = RunFilter(metadata={"batch": "one"})
    seen: list[str] = []
    page = await env.kernel.list_runs(where, limit=3)
    while True:
        seen += [r.run_id for r in page.runs]
        backend.clock.advance(0.001)  # time passes between pages
        await env.create_run("lab", metadata={"batch": "one"})  # newer: on no later page
        if page.next_cursor is None:
            break
        page = await env.kernel.list_runs(where, limit=3, cursor=page.next_cursor)
    assert sorted(seen) == sorted(made)
    assert len(seen) == len(made)
    listed = (await env.kernel.list_runs(where, limit=100)).runs
    assert seen == [r.run_id for r in listed if r.run_id in made]
    assert all(r.metadata["batch"] == "one" for r in listed)


async def test_a_last_page_has_no_cursor_and_a_full_one_has(backend: Adapters) -> None:
    env = make_env(backend, [labelled_flow()])
    for _ in range(2):
        await env.create_run("lab")
    assert (await env.kernel.list_runs(limit=2)).next_cursor is None
    assert (await env.kernel.list_runs(limit=1)).next_cursor is not None
    assert (await env.kernel.list_runs(RunFilter(status="completed"))).runs == []


@pytest.mark.parametrize(
    "cursor", ["", "garbage", "r1.", "r1.!!!", "r1.WzEsMl0", "r1.WyIyMDI2LTEyLTAzIiwieCJd"]
)
async def test_a_malformed_cursor_is_refused_with_a_typed_error(
    backend: Adapters, cursor: str
) -> None:
    # WzEsMl0 is [1,2]; the last is ["2026-12-03","x"], a time with no timezone.
    env = make_env(backend, [labelled_flow()])
    with pytest.raises(InvalidCursorError) as raised:
        await env.kernel.list_runs(cursor=cursor)
    assert isinstance(raised.value, ValueError)
    assert "not a run cursor" in raised.value.message


async def test_create_stores_the_metadata_given(backend: Adapters) -> None:
    env = make_env(backend, [labelled_flow()])
    run_id = await env.create_run("lab", metadata={"team": "x"})
    plain = await env.create_run("lab")
    assert (await env.get_run(run_id)).metadata == {"team": "x"}
    assert (await env.get_run(plain)).metadata == {}
    page = await env.kernel.list_runs(RunFilter(metadata={"team": "x"}))
    assert [r.run_id for r in page.runs] == [run_id]


# --- logs --------------------------------------------------------------------------------


async def write_logs(backend: Adapters, *lines: LogRecord) -> None:
    async with backend.persistence.transaction() as tx:
        await tx.apply(Changeset(logs=lines))


async def test_a_runs_log_reads_in_write_order_and_resumes_with_no_gap_or_repeat(
    backend: Adapters,
) -> None:
    await insert_runs(backend, run("r1"), run("r2"))
    await write_logs(backend, log("r1", "one", stage_id="a"), log("r2", "other"))
    await write_logs(backend, log("r1", "two", stage_id="b"), log("r1", "three"))

    async with backend.persistence.transaction() as tx:
        every = await tx.logs.for_run("r1")
        head = await tx.logs.for_run("r1", limit=2)
        tail = await tx.logs.for_run("r1", after=head[-1].id)
        of_b = await tx.logs.for_run("r1", stage_id="b")
        none = await tx.logs.for_run("nobody")

    assert [line.message for line in every] == ["one", "two", "three"]
    assert [line.id for line in every] == sorted({line.id for line in every})
    assert head + tail == every
    assert [line.message for line in of_b] == ["two"]
    assert none == []
    first = every[0]
    assert (first.run_id, first.stage_id, first.attempt, first.level) == ("r1", "a", 1, "INFO")
    assert (first.fields, first.at) == ({"k": "one"}, at(0))

    await write_logs(backend, log("r1", "four", stage_id="a"), log("r2", "more"))
    async with backend.persistence.transaction() as tx:
        later = await tx.logs.for_run("r1", after=every[-1].id)
        later_a = await tx.logs.for_run("r1", after=every[-1].id, stage_id="a")
    assert [line.message for line in later] == ["four"]
    assert later_a == later


async def test_run_logs_pages_through_a_run_and_says_its_status(backend: Adapters) -> None:
    env = make_env(backend, [labelled_flow()])
    await insert_runs(backend, run("r1", status=RunStatus.FAILED))
    await write_logs(backend, *(log("r1", f"line {i}", stage_id="s") for i in range(5)))

    first = await env.kernel.run_logs("r1", limit=3)
    rest = await env.kernel.run_logs("r1", after=first.next_after, limit=3)
    after_all = await env.kernel.run_logs("r1", after=rest.next_after)

    assert [x.message for x in first.lines + rest.lines] == [f"line {i}" for i in range(5)]
    assert (first.more, rest.more, first.status) == (True, False, RunStatus.FAILED)
    assert (after_all.lines, after_all.next_after, after_all.more) == ([], rest.next_after, False)
    with pytest.raises(RunNotFoundError):
        await env.kernel.run_logs("nobody")


async def test_lines_a_stage_logs_are_read_back_with_its_attempt(backend: Adapters) -> None:
    def chatty(ctx: StageContext) -> int:
        ctx.log("info", "starting", n=1)
        if ctx.attempt == 1:
            ctx.log("warning", "flaky")
            raise ConnectionError("once")
        ctx.log("error", "done", nested={"a": [1, None]})
        return 1

    policy = RetryPolicy(max_attempts=2, initial_backoff=1, jitter=0)
    flow = (
        WorkflowBuilder("chat")
        .pipe(define_stage(id="s", execute=chatty, retry=policy))
        .pipe(define_stage(id="t", execute=lambda c: c.log("info", "t ran")))
        .build()
    )
    env: TestEnvironment = make_env(backend, [flow])
    done = await env.run("chat")
    assert done.status is RunStatus.COMPLETED

    page = await env.kernel.run_logs(done.run_id)
    of_s = await env.kernel.run_logs(done.run_id, stage_id="s")

    seen = [(x.stage_id, x.attempt, x.level, x.message) for x in page.lines]
    assert seen == [
        ("s", 1, "info", "starting"),
        ("s", 1, "warning", "flaky"),
        ("s", 2, "info", "starting"),
        ("s", 2, "error", "done"),
        ("t", 1, "info", "t ran"),
    ]
    assert [x.fields for x in of_s.lines] == [{"n": 1}, {}, {"n": 1}, {"nested": {"a": [1, None]}}]
    assert page.status is RunStatus.COMPLETED


async def test_a_create_with_bad_metadata_is_refused_and_writes_nothing(
    backend: Adapters,
) -> None:
    env = make_env(backend, [labelled_flow()])
    for metadata in ({"has space": "x"}, {"k": "\x00"}, {f"k{i}": "v" for i in range(33)}):
        with pytest.raises(InvalidCommandError):
            await env.kernel.dispatch(
                {"type": "run.create", "workflow_id": "lab", "metadata": metadata}
            )
    with pytest.raises(ValidationError, match="at most 256"):  # pydantic's, for the model
        RunCreate(workflow_id="lab", metadata={"k": "x" * 257})
    assert (await env.kernel.list_runs()).runs == []
