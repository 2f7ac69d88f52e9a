"""run.create: validated, idempotent, and writes nothing when it refuses."""

from __future__ import annotations

import pytest

from stagewise import (
    IdempotencyKeyReusedError,
    InvalidCommandError,
    InvalidConfigError,
    InvalidRunInputError,
    KernelSettings,
    PayloadTooLargeError,
    RunCreate,
    RunStatus,
    WorkflowBuilder,
    WorkflowNotFoundError,
    define_stage,
)
from stagewise.testing import TestEnvironment
from tests.unit.workflows import Num, four_groups


async def _row_counts(env: TestEnvironment) -> tuple[int, int, int]:
    return (
        len(env.persistence.snapshot_runs()),
        len(env.persistence.snapshot_events()),
        env.persistence.transactions,
    )


async def test_the_same_idempotency_key_returns_the_same_run_and_writes_nothing() -> None:
    env = TestEnvironment([four_groups()])
    cmd = RunCreate(workflow_id="four", input={"n": 1}, idempotency_key="order-42")
    first = await env.kernel.dispatch(cmd)
    before = await _row_counts(env)

    again = await env.kernel.dispatch(cmd)

    assert first.created and not again.created
    assert again.run_id == first.run_id
    runs, events, _ = await _row_counts(env)
    assert (runs, events) == before[:2]


async def test_reusing_a_key_for_a_different_request_is_refused() -> None:
    env = TestEnvironment([four_groups()])
    await env.kernel.dispatch(RunCreate(workflow_id="four", input={"n": 1}, idempotency_key="k"))
    with pytest.raises(IdempotencyKeyReusedError) as err:
        await env.kernel.dispatch(
            RunCreate(workflow_id="four", input={"n": 2}, idempotency_key="k")
        )
    assert err.value.key == "k"


@pytest.mark.parametrize(
    ("command", "error"),
    [
        ({"type": "run.create", "workflow_id": "four", "input": {"n": "x"}}, InvalidRunInputError),
        ({"type": "run.create", "workflow_id": "four", "input": {}}, InvalidRunInputError),
        ({"type": "run.create", "workflow_id": "nope", "input": {"n": 1}}, WorkflowNotFoundError),
        (
            {"type": "run.create", "workflow_id": "four", "input": {"n": 1}, "config": {"x": {}}},
            InvalidConfigError,
        ),
        ({"type": "run.create", "workflow_id": "four", "inputs": {"n": 1}}, InvalidCommandError),
        ({"type": "run.explode"}, InvalidCommandError),
        ({"workflow_id": "four"}, InvalidCommandError),
    ],
)
async def test_invalid_requests_are_refused_with_a_clear_error_and_write_nothing(
    command: dict[str, object], error: type[Exception]
) -> None:
    env = TestEnvironment([four_groups()])
    with pytest.raises(error) as err:
        await env.kernel.dispatch(command)
    assert str(err.value)
    assert await _row_counts(env) == (0, 0, 0)


async def test_input_errors_name_the_field() -> None:
    env = TestEnvironment([four_groups()])
    with pytest.raises(InvalidRunInputError) as err:
        await env.kernel.dispatch({"type": "run.create", "workflow_id": "four", "input": {}})
    assert "n" in str(err.value) and err.value.errors[0]["loc"] == ["n"]


async def test_config_is_validated_per_stage_with_defaults() -> None:
    from pydantic import BaseModel

    class Cfg(BaseModel):
        factor: int = 3

    seen = []

    def scaled(ctx):  # type: ignore[no-untyped-def]
        seen.append(ctx.config)
        return ctx.input.n * ctx.config.factor

    wf = (
        WorkflowBuilder("cfg", input=Num)
        .pipe(define_stage(id="s", input=Num, config=Cfg, execute=scaled))
        .build()
    )
    env = TestEnvironment([wf])
    assert wf.default_config() == {"s": {"factor": 3}}
    with pytest.raises(InvalidConfigError):
        await env.kernel.dispatch(
            RunCreate(workflow_id="cfg", input={"n": 2}, config={"s": {"factor": "many"}})
        )
    run_id = await env.create_run("cfg", {"n": 2}, config={"s": {"factor": 5}})
    await env.run_until_idle()
    assert (await env.get_run(run_id)).output == 10
    assert seen == [Cfg(factor=5)]


async def test_inputs_over_the_size_limit_are_refused() -> None:
    wf = WorkflowBuilder("any").pipe(define_stage(id="s", execute=lambda c: 1)).build()
    env = TestEnvironment([wf], settings=KernelSettings(max_payload_bytes=1000))
    with pytest.raises(PayloadTooLargeError) as err:
        await env.kernel.dispatch(RunCreate(workflow_id="any", input="x" * 2000))
    assert err.value.limit == 1000
    assert await _row_counts(env) == (0, 0, 0)


async def test_a_new_run_is_pending_until_claimed_and_asks_to_be_claimed() -> None:
    env = TestEnvironment([four_groups()])
    result = await env.kernel.dispatch(RunCreate(workflow_id="four", input={"n": 1}))
    assert result.status is RunStatus.PENDING
    assert ("run.claimPending", env.clock.now()) in env.scheduler.hints


async def test_claim_order_is_priority_then_age() -> None:
    from stagewise import RunClaimPending

    env = TestEnvironment([four_groups()])
    low = await env.create_run("four", {"n": 1})
    env.clock.advance(1)
    high = await env.create_run("four", {"n": 1}, priority=5)
    env.clock.advance(1)
    low2 = await env.create_run("four", {"n": 1})
    first = await env.kernel.dispatch(RunClaimPending(limit=2))
    assert first.run_ids == [high, low]
    second = await env.kernel.dispatch(RunClaimPending(limit=2))
    assert second.run_ids == [low2]
