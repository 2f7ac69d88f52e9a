"""The `stagewise` command line on SQLite: every command, and every mistake as one line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stagewise import (
    KernelSettings,
    RunStatus,
    Workflow,
    WorkflowBuilder,
    WorkflowRegistry,
    define_stage,
)
from stagewise_node import NodeHostSettings, node_host
from stagewise_sql import SqlBackend
from tests.integration.node.cli_support import APP, one_error_line, run_id_in, stagewise
from tests.integration.node.flows import workflows
from tests.integration.node.processes import ROOT


async def serve_until_idle(
    url: str, run_id: str, flows: list[Workflow] = workflows, *, within: float = 10.0
) -> None:
    """A node host in this process (serving `flows`) until the run finishes (for at most
    `within` seconds)."""
    backend = await SqlBackend.connect(url)
    host = node_host(
        backend,
        WorkflowRegistry(flows),
        worker_id="cli-test",
        settings=NodeHostSettings(concurrency=2, job_poll_interval=0.2, claim_interval=0.2),
        kernel_settings=KernelSettings(lease_seconds=5),
    )
    await host.start()
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            async with backend.persistence.transaction() as tx:
                run = await tx.runs.get(run_id)
            if run is not None and run.status.is_terminal:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the run did not finish")
    finally:
        await host.stop(drain_timeout=2)
        await host.kernel.aclose()
        await backend.close()


def test_bad_arguments_are_one_line_and_a_non_zero_exit(db: str) -> None:
    code, out = stagewise("run", "nope", "--input", "{}", "--db", db, "--app", APP)
    assert code == 1
    assert "workflow 'nope' is not registered" in one_error_line(out)

    code, out = stagewise("run", "three", "--input", "{not json", "--db", db, "--app", APP)
    assert code == 1
    assert "--input is not valid JSON" in one_error_line(out)

    code, out = stagewise("run", "three", "--input", '{"n": "x"}', "--db", db, "--app", APP)
    assert code == 1
    assert "input for workflow 'three' is invalid" in one_error_line(out)

    code, out = stagewise("run", "three", "--input", '{"n": 1}', "--db", db)
    assert code == 1
    assert "pass --app" in one_error_line(out)

    code, out = stagewise("run", "three", "--db", db, "--app", "no_such_module:flows")
    assert code == 1
    assert "cannot import 'no_such_module'" in one_error_line(out)

    unreachable = "postgresql://postgres@127.0.0.1:1/nothing"
    code, out = stagewise("runs", "list", "--db", unreachable)
    assert code == 1
    assert "cannot connect to the database" in one_error_line(out)

    code, out = stagewise("worker", APP, "--db", unreachable)
    assert code == 1
    assert "cannot connect to the database" in one_error_line(out)

    code, out = stagewise("runs", "list", "--db", "mysql://somewhere/db")
    assert code == 1
    assert "not supported" in one_error_line(out)

    code, out = stagewise("runs", "show", "no-such-run", "--db", db)
    assert code == 1
    assert "does not exist" in one_error_line(out)


def test_a_run_created_listed_shown_completed_and_rerun(db: str) -> None:
    code, out = stagewise("db", "upgrade", "--db", db)
    assert code == 0, out
    assert "schema revision" in out

    code, out = stagewise("run", "three", "--input", '{"n": 5}', "--db", db, "--app", APP)
    assert code == 0, out
    run_id = run_id_in(out)

    code, out = stagewise("runs", "list", "--db", db)
    assert code == 0, out
    assert run_id in out
    assert "RUNNING" in out  # `stagewise run` starts it at once: its first job is queued

    asyncio.run(serve_until_idle(db, run_id))
    code, out = stagewise("runs", "list", "--status", "COMPLETED", "--db", db)
    assert run_id in out
    code, out = stagewise("runs", "show", run_id, "--db", db)
    assert code == 0, out
    for text in ("COMPLETED", "stages", "attempts", "cli-test", '"n": 8'):
        assert text in out, out

    code, out = stagewise("runs", "rerun", run_id, "--from", "b", "--db", db, "--app", APP)
    assert code == 0, out
    assert "RUNNING again from b" in out
    asyncio.run(serve_until_idle(db, run_id))
    code, out = stagewise("runs", "show", run_id, "--json", "--db", db)
    assert '"status": "COMPLETED"' in out


def test_cancel_a_run(db: str) -> None:
    code, out = stagewise("run", "three", "--input", '{"n": 1}', "--db", db, "--app", APP)
    run_id = run_id_in(out)
    code, out = stagewise("runs", "cancel", run_id, "--reason", "test", "--db", db)
    assert code == 0, out
    assert f"cancelled run {run_id}" in out
    code, out = stagewise("runs", "cancel", run_id, "--db", db)
    assert code == 0
    assert "already finished (CANCELLED)" in out
    code, out = stagewise("runs", "list", "--status", "CANCELLED", "--db", db)
    assert run_id in out


@pytest.mark.slow
def test_run_wait_follows_a_run_that_a_worker_process_executes(db: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "stagewise_node.cli"]
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [*cli, "worker", APP, "--db", db, "--poll-interval", "0.2", "--lease", "5"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        run = ["run", "three", "--input", '{"n": 1}', "--wait", "--timeout", "60"]
        done = subprocess.run(
            [*cli, *run, "--db", db, "--app", APP],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "COMPLETED" in done.stdout
        assert '"n": 4' in done.stdout
    finally:
        worker.terminate()
        assert worker.wait(30) == 0, (tmp_path / "worker.log").read_text()


@pytest.mark.slow
def test_stagewise_demo_runs_the_example_to_completion(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the demo's default database goes there
    for _ in range(2):  # and a second demo on the same database works as well
        done = subprocess.run(
            [sys.executable, "-m", "stagewise_node.cli", "demo"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "summary" in out
        assert "run completed" in out
        for stage in ("parse", "count_words", "keywords", "translate", "summarize"):
            assert stage in out
        assert "attempt 1 failed (ConnectionError" in out
        assert "suspended, resumed after" in out
        assert "Traceback" not in done.stderr
    assert list(tmp_path.glob("stagewise-demo-*/demo.db"))
    assert RunStatus.COMPLETED.value in out


def test_the_cli_runs_on_uvloop_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from stagewise_node.cli._output import LOOP_ENV, run_async

    async def loop_type() -> str:
        return type(asyncio.get_running_loop()).__module__

    monkeypatch.delenv(LOOP_ENV, raising=False)
    assert run_async(loop_type()).startswith("uvloop")
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    assert run_async(loop_type()).startswith("asyncio")


def test_runs_show_their_workflow_version_and_list_filters_by_it(db: str) -> None:
    from tests.integration.node.flows import workflows

    version = next(w for w in workflows if w.id == "three").version
    code, out = stagewise("run", "three", "--input", '{"n": 1}', "--db", db, "--app", APP)
    run_id = run_id_in(out)

    code, shown = stagewise("runs", "show", run_id, "--db", db)
    _, as_json = stagewise("runs", "show", run_id, "--json", "--db", db)
    _, listed = stagewise("runs", "list", "--version", version, "--db", db)
    _, other = stagewise("runs", "list", "--version", "not-this-one", "--db", db)

    assert code == 0, shown
    assert version in shown
    assert "no live worker (start one: stagewise worker)" in shown  # nobody runs it yet
    assert f'"workflow_version": "{version}"' in as_json
    assert run_id in listed
    assert run_id not in other and "0 run(s)" in other


def test_run_wait_says_when_no_live_worker_serves_the_database(db: str) -> None:
    code, out = stagewise(
        "run", "three", "--input", '{"n": 1}', "--wait", "--timeout", "4.5", "--db", db,
        "--app", APP,
    )  # fmt: skip
    assert code == 1
    note = next(line for line in out.splitlines() if line.startswith("note:"))
    assert "no live worker (start one: stagewise worker)" in note
    assert db.removeprefix("sqlite:///") in note  # the database it waits on
    assert "still waiting" in note
    assert out.count("note:") == 1  # said once
    assert "is still RUNNING after 4.5s" in out


def test_workers_list_shows_a_worker_that_ran_and_stopped(db: str) -> None:
    code, out = stagewise("run", "three", "--input", '{"n": 1}', "--db", db, "--app", APP)
    asyncio.run(serve_until_idle(db, run_id_in(out)))

    code, listed = stagewise("workers", "list", "--db", db)

    assert code == 0, listed
    assert "0 live worker(s), 1 known" in listed
    row = next(line for line in listed.splitlines() if "cli-test" in line)
    assert "stopped" in row and str(os.getpid()) in row
    assert "three" in listed  # the workflows it had


def test_runs_show_says_when_no_live_worker_has_the_runs_version(db: str) -> None:
    from stagewise import WorkerBeat
    from stagewise_sql import SqlBackend

    code, out = stagewise("run", "three", "--input", '{"n": 1}', "--db", db, "--app", APP)
    run_id = run_id_in(out)

    async def a_worker_of_another_version() -> None:
        backend = await SqlBackend.connect(db)
        other = [
            WorkflowBuilder("three", version="next")
            .pipe(define_stage(id="z", execute=lambda c: 1))
            .build()
        ]
        kernel = backend.kernel(WorkflowRegistry(other))
        try:
            await kernel.dispatch(WorkerBeat(worker_id="w-next", beat_interval=60))
        finally:
            await kernel.aclose()
            await backend.close()

    asyncio.run(a_worker_of_another_version())
    code, shown = stagewise("runs", "show", run_id, "--db", db)

    assert code == 0, shown
    assert "no live worker has version" in " ".join(shown.split())
    assert "(they have next)" in " ".join(shown.split())
