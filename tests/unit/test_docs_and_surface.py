"""The public surface is pinned, every command has exactly one handler, the state tables
are the only source of truth, and the README's code runs as written."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

import stagewise
from stagewise import InvalidTransitionError, RunStatus, StageStatus
from stagewise._commands import Command
from stagewise._kernel import HANDLERS
from stagewise._states import (
    RUN_TRANSITIONS,
    STAGE_TRANSITIONS,
    RunTrigger,
    StageTrigger,
    next_run_status,
    next_stage_status,
)

ROOT = Path(__file__).resolve().parents[2]


def test_every_command_has_exactly_one_handler() -> None:
    union = typing.get_args(typing.get_args(Command)[0])
    assert set(union) == set(HANDLERS)
    assert len(union) == len(HANDLERS)
    types = [cls.model_fields["type"].default for cls in union]
    assert len(set(types)) == len(types)


def test_public_surface_is_pinned() -> None:
    for name in stagewise.__all__:
        assert hasattr(stagewise, name), name
    expected = {
        "define_stage",
        "define_async_batch_stage",
        "define_plugin",
        "WorkflowBuilder",
        "WorkflowRegistry",
        "Workflow",
        "StageContext",
        "RetryPolicy",
        "StageResult",
        "Suspend",
        "Ready",
        "NotReady",
        "create_kernel",
        "Kernel",
        "KernelSettings",
        "RunCreate",
        "RunClaimPending",
        "JobExecute",
        "RunTransition",
        "StagePollSuspended",
        "LeaseReapStale",
        "OutboxFlush",
        "RunCancel",
        "RunRerunFrom",
        "PluginReplayDLQ",
        "JobHeartbeat",
        "JobRelease",
        "StagewiseError",
        "WorkflowNotFoundError",
        "InvalidRunInputError",
        "InvalidConfigError",
        "InvalidTransitionError",
        "IdempotencyInProgressError",
        "LeaseLost",
        "RunStatus",
        "StageStatus",
    }
    assert expected <= set(stagewise.__all__)
    assert len(stagewise.__all__) == len(set(stagewise.__all__))


def test_testing_surface_is_pinned() -> None:
    import stagewise.testing as testing

    assert set(testing.__all__) >= {
        "FakeClock",
        "InMemoryPersistence",
        "InMemoryJobQueue",
        "InMemoryBlobStore",
        "CollectingEventSink",
        "NoopScheduler",
        "TestEnvironment",
        "run_until_idle",
    }
    for name in testing.__all__:
        assert hasattr(testing, name), name


@pytest.mark.parametrize("status", list(RunStatus))
@pytest.mark.parametrize("trigger", typing.get_args(RunTrigger))
def test_run_transitions_come_from_the_table_or_raise(status: RunStatus, trigger: str) -> None:
    expected = RUN_TRANSITIONS.get((status, trigger))  # type: ignore[arg-type]
    if expected is None:
        with pytest.raises(InvalidTransitionError) as err:
            next_run_status(status, trigger, run_id="r", command="cmd")  # type: ignore[arg-type]
        assert (err.value.entity, err.value.state, err.value.command) == ("run", status, "cmd")
    else:
        assert next_run_status(status, trigger, run_id="r", command="c") is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("status", list(StageStatus))
@pytest.mark.parametrize("trigger", typing.get_args(StageTrigger))
def test_stage_transitions_come_from_the_table_or_raise(status: StageStatus, trigger: str) -> None:
    expected = STAGE_TRANSITIONS.get((status, trigger))  # type: ignore[arg-type]
    if expected is None:
        with pytest.raises(InvalidTransitionError):
            next_stage_status(status, trigger, stage_key="r/s", command="c")  # type: ignore[arg-type]
    else:
        assert next_stage_status(status, trigger, stage_key="r/s", command="c") is expected  # type: ignore[arg-type]


def test_terminal_states_only_leave_by_rerun_or_reset() -> None:
    for (status, trigger), _ in RUN_TRANSITIONS.items():
        if status.is_terminal:
            assert trigger == "rerun"
    for (status, trigger), _ in STAGE_TRANSITIONS.items():
        if status.is_terminal:
            assert trigger == "reset"


def _readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


async def test_the_readme_example_runs_as_written() -> None:
    blocks = _readme_blocks()
    workflow = [b for b in blocks if 'WorkflowBuilder("checkout"' in b]
    tests = [b for b in blocks if "async def test_checkout(" in b]
    assert len(workflow) == len(tests) == 1
    namespace: dict[str, object] = {}
    exec(compile(workflow[0] + "\n" + tests[0], "README.md", "exec"), namespace)
    await namespace["test_checkout"]()  # type: ignore[operator]
