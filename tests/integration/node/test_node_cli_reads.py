"""`stagewise runs list` with its filters and pages, and `stagewise runs logs` (with
`--follow` in a process of its own, against a run a worker finishes meanwhile)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.node.cli_support import one_error_line, run_id_in, stagewise
from tests.integration.node.log_flows import GATE_ENV
from tests.integration.node.log_flows import workflows as log_workflows
from tests.integration.node.processes import ROOT
from tests.integration.node.test_node_cli import serve_until_idle

LOGS_APP = "tests.integration.node.log_flows:workflows"
RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def create(db: str, workflow: str = "chatty", *meta: str) -> str:
    options = [w for pair in meta for w in ("--meta", pair)]
    code, out = stagewise("run", workflow, *options, "--db", db, "--app", LOGS_APP)
    assert code == 0, out
    return run_id_in(out)


def listed(db: str, *args: str) -> list[str]:
    code, out = stagewise("runs", "list", *args, "--db", db)
    assert code == 0, out
    return RUN_ID.findall(out.split("more:")[0])


def test_runs_list_filters_by_metadata_time_and_status(db: str) -> None:
    first = create(db, "chatty", "team=a", "env=prod")
    second = create(db, "chatty", "team=b")

    assert listed(db, "--meta", "team=a") == [first]
    assert listed(db, "--meta", "team=a", "--meta", "env=prod") == [first]
    assert listed(db, "--meta", "team=a", "--meta", "env=dev") == []
    assert listed(db, "--meta", "nobody=x") == []
    assert listed(db, "--since", "1h") == [second, first]
    assert listed(db, "--since", "2020-01-01T00:00", "--until", "2999-01-01") == [second, first]
    assert listed(db, "--until", "1h") == []
    assert listed(db, "--finished-since", "1d") == []  # neither has finished
    assert listed(db, "--status", "running", "--meta", "team=b") == [second]

    code, shown = stagewise("runs", "list", "--meta", "team=a", "--db", db)
    assert "team=a" in shown and "env=prod" in shown  # the metadata column
    code, out = stagewise("runs", "list", "--json", "--db", db)
    page = json.loads(out)
    assert [r["run_id"] for r in page["runs"]] == [second, first]
    assert page["runs"][1]["metadata"] == {"team": "a", "env": "prod"}
    assert page["next_cursor"] is None
    code, out = stagewise("runs", "show", first, "--json", "--db", db)
    assert json.loads(out)["metadata"] == {"team": "a", "env": "prod"}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--since", "yesterday"), "--since 'yesterday' is neither a duration"),
        (("--meta", "no-equals"), "--meta takes KEY=VALUE, not 'no-equals'"),
        (("--meta", "bad key=x"), "not a metadata key"),
        (("--cursor", "garbage"), "not a run cursor: 'garbage'"),
    ],
)
def test_runs_list_mistakes_are_one_line(db: str, args: tuple[str, ...], says: str) -> None:
    create(db)
    code, out = stagewise("runs", "list", *args, "--db", db)
    assert code == 1
    assert says in one_error_line(out)


def test_run_refuses_metadata_out_of_bounds_in_one_line(db: str) -> None:
    code, out = stagewise("run", "chatty", "--meta", "bad key=x", "--db", db, "--app", LOGS_APP)
    assert code == 1
    assert "cannot create a run of 'chatty': metadata.bad key" in one_error_line(out)
    code, out = stagewise("run", "chatty", "--meta", "k", "--db", db, "--app", LOGS_APP)
    assert "--meta takes KEY=VALUE, not 'k'" in one_error_line(out)


def _next_page(out: str) -> list[str] | None:
    """The arguments of the suggested command for the next page (after `stagewise`)."""
    match = re.search(r"^more: (.+)$", out, re.MULTILINE)
    if match is None:
        return None
    words = shlex.split(match.group(1))
    return words[words.index("runs") :]


def test_runs_list_pages_with_a_cursor_and_prints_the_next_command(db: str) -> None:
    made = [create(db, "chatty", "batch=1") for _ in range(5)]
    create(db, "chatty", "batch=2")

    seen: list[str] = []
    args: list[str] | None = ["runs", "list", "--meta", "batch=1", "--since", "1h", "--limit", "2"]
    pages = 0
    while args is not None:
        code, out = stagewise(*args, "--db", db)
        assert code == 0, out
        seen += RUN_ID.findall(out.split("more:")[0])
        args = _next_page(out)
        if args is not None:
            assert "--cursor" in args and "--meta" in args and "batch=1" in args
            assert not any(re.fullmatch(r"\d+h", a) for a in args)  # times as points
            create(db, "chatty", "batch=1")  # created between pages: on no later page
        pages += 1
    assert pages == 3
    assert seen == list(reversed(made))


def test_runs_logs_prints_the_lines_in_order_escaped_and_by_stage(db: str) -> None:
    run_id = create(db)
    asyncio.run(serve_until_idle(db, run_id, log_workflows))

    code, out = stagewise("runs", "logs", run_id, "--db", db, "--utc")
    assert code == 0, out
    lines = out.splitlines()
    assert [re.sub(r"^\S+ \S+ UTC  ", "", line).split("  ")[0] for line in lines] == [
        "a#1",
        "a#1",
        "b#1",
        "c#1",
    ]
    assert "INFO    a says hi  n=1 who=alice" in lines[0]
    assert "\x1b" not in out and "\x9b" not in out
    assert "WARNING sneaky \\x1b[2J\\nforged line  path=x\\x9by" in lines[1]
    assert "DEBUG   c is last" in lines[3]

    code, of_b = stagewise("runs", "logs", run_id, "--stage", "b", "--db", db)
    assert [line.split("  ")[1] for line in of_b.splitlines()] == ["b#1"]

    code, as_json = stagewise("runs", "logs", run_id, "--json", "--db", db)
    records = [json.loads(line) for line in as_json.splitlines()]
    assert [r["message"] for r in records][::3] == ["a says hi", "c is last"]
    assert records[1]["message"] == "sneaky \x1b[2J\nforged line"  # the same value
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    assert records[0]["fields"] == {"n": 1, "who": "alice"}

    code, out = stagewise("runs", "logs", run_id, "--follow", "--db", db)
    assert code == 0, out
    assert out.splitlines()[-1] == f"run {run_id} completed"


def test_following_a_run_that_failed_prints_its_end_and_exits_1(db: str) -> None:
    run_id = create(db, "chatty-fails")
    asyncio.run(serve_until_idle(db, run_id, log_workflows))

    code, out = stagewise("runs", "logs", run_id, "--follow", "--db", db)
    assert code == 1
    assert "about to fail" in out
    assert out.splitlines()[-1] == f"run {run_id} failed: ValueError: it broke"

    code, out = stagewise("runs", "logs", run_id, "--follow", "--json", "--db", db)
    assert code == 1
    assert json.loads(out.splitlines()[-1])["status"] == "FAILED"


def test_the_logs_of_a_missing_run_are_one_error_line(db: str) -> None:
    create(db)
    for follow in ((), ("--follow",)):
        code, out = stagewise("runs", "logs", "nope", *follow, "--db", db)
        assert code == 1
        assert one_error_line(out) == "error: run 'nope' does not exist"


# --- --follow in a process of its own ------------------------------------------------------


async def _until(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _follower(db: str, run_id: str, out: Path) -> subprocess.Popen[bytes]:
    """`stagewise runs logs RUN_ID -f` in a process of its own: stdout to `out`, stderr to
    `out` with `.err` added."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    with out.open("wb") as sink, out.with_suffix(".err").open("wb") as errors:
        return subprocess.Popen(
            [sys.executable, "-m", "stagewise_node.cli", "runs", "logs", run_id, "-f", "--db", db],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=errors,
        )


def follow_a_run_that_waits(
    db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    midway: Callable[[subprocess.Popen[bytes]], None],
) -> tuple[str, Path, int]:
    """Follow a `chatty` run from another process while a worker here runs it: once the
    follower has shown a's lines (stage b waits for a gate meanwhile), call `midway` with the
    follower (still running), then let the run finish. The run id, the follower's
    output file, and its exit code."""
    gate = tmp_path / "gate"
    monkeypatch.setenv(GATE_ENV, str(gate))  # stage b waits for it, in the worker here
    run_id = create(db)
    out = tmp_path / "follow.out"
    follower = _follower(db, run_id, out)

    async def scenario() -> None:
        worker = asyncio.create_task(serve_until_idle(db, run_id, log_workflows, within=90))
        await _until(lambda: "sneaky" in out.read_text(), "a's lines")
        assert follower.poll() is None
        midway(follower)
        gate.touch()
        await worker

    try:
        asyncio.run(scenario())
        code = follower.wait(60)
    finally:
        follower.kill()
    return run_id, out, code


@pytest.mark.slow
def test_follow_prints_lines_as_a_worker_writes_them_until_the_run_ends(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "follow.out"

    def midway(_: subprocess.Popen[bytes]) -> None:  # a's lines, while the run still goes
        assert "b went through" not in out.read_text()

    run_id, out, code = follow_a_run_that_waits(db, tmp_path, monkeypatch, midway)

    assert code == 0, out.with_suffix(".err").read_text()
    text = out.read_text()  # and the rest as the worker wrote them, then the end
    order = ["a says hi", "sneaky", "b went through", "c is last", f"run {run_id} completed"]
    assert [text.index(x) for x in order] == sorted(text.index(x) for x in order)
    assert len(text.splitlines()) == 5  # each line once


@pytest.mark.slow
def test_ctrl_c_stops_a_follower_quietly_with_exit_code_130(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(follower: subprocess.Popen[bytes]) -> None:
        follower.send_signal(signal.SIGINT)

    _, out, code = follow_a_run_that_waits(db, tmp_path, monkeypatch, interrupt)

    assert code == 130
    assert out.with_suffix(".err").read_text() == ""
    assert "completed" not in out.read_text()
