"""The fixtures of stagewise's pytest plugin (loaded here through its entry point, as in any
project that installs stagewise)."""

from __future__ import annotations

from typing import Any

from stagewise import KernelSettings, RunStatus, WorkflowBuilder, WorkflowRegistry, define_stage
from stagewise_sql import SqlJobTransport


def flow(workflow_id: str) -> Any:
    return (
        WorkflowBuilder(workflow_id)
        .pipe(define_stage(id="only", execute=lambda ctx: {"done": workflow_id}))
        .build()
    )


async def test_stagewise_env_takes_workflows_lists_and_registries(stagewise_env: Any) -> None:
    env = stagewise_env(flow("a"), [flow("b")], settings=KernelSettings(lease_seconds=7))
    assert {w.id for w in env.registry} == {"a", "b"}
    assert env.kernel.settings.lease_seconds == 7
    run = await env.run("b")
    assert run.status is RunStatus.COMPLETED
    again = stagewise_env(WorkflowRegistry([flow("c")]))
    assert {w.id for w in again.registry} == {"c"}


async def test_stagewise_sqlite_env_runs_on_a_sqlite_file_of_its_own(
    stagewise_sqlite_env: Any,
) -> None:
    first = await stagewise_sqlite_env(flow("a"))
    second = await stagewise_sqlite_env(flow("a"))  # its own file: the same ids do not clash
    assert isinstance(first.queue, SqlJobTransport)
    for env in (first, second):
        run = await env.run("a")
        assert run.status is RunStatus.COMPLETED
        assert await env.output(run.run_id) == {"done": "a"}
