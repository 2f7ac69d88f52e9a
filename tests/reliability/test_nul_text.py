"""Text PostgreSQL cannot store (a NUL character) in what a stage produces.

PostgreSQL refuses U+0000 in `text` and `jsonb`; SQLite and memory store it. Whatever a
stage produces - its output, the message of the exception it raised, a log line - must not
make the transaction that records it fail on one backend and pass on another: the stage
must end the same way everywhere, with a clear reason.
"""

from __future__ import annotations

from typing import Any

from stagewise import (
    RetryPolicy,
    RunStatus,
    StageContext,
    StageStatus,
    WorkflowBuilder,
    define_stage,
)
from tests.conftest import Adapters
from tests.contract.test_kernel_scenarios import make_env


async def test_an_output_with_a_nul_character_fails_the_stage_clearly_on_every_backend(
    backend: Adapters,
) -> None:
    def nul(ctx: StageContext) -> dict[str, Any]:
        return {"text": "before\x00after"}

    wf = (
        WorkflowBuilder("nul")
        .pipe(define_stage(id="nul", execute=nul, retry=RetryPolicy(max_attempts=3)))
        .build()
    )
    env = make_env(backend, [wf])
    run = await env.run("nul")
    stage = (await env.stages(run.run_id))["nul"]
    await env.kernel.aclose()
    assert run.status is RunStatus.FAILED
    assert stage.status is StageStatus.FAILED
    assert stage.attempt == 1, "bad output is not retried"
    assert stage.error is not None and stage.error.type == "StageOutputError"
    assert "NUL" in stage.error.message


async def test_an_exception_message_with_a_nul_character_is_recorded_on_every_backend(
    backend: Adapters,
) -> None:
    def boom(ctx: StageContext) -> None:
        ctx.log("info", "about to fail\x00")
        raise ValueError("bad\x00byte")

    wf = (
        WorkflowBuilder("boom")
        .pipe(
            define_stage(
                id="boom", execute=boom, retry=RetryPolicy(max_attempts=2, initial_backoff=1)
            )
        )
        .build()
    )
    env = make_env(backend, [wf])
    run = await env.run("boom")
    stage = (await env.stages(run.run_id))["boom"]
    await env.kernel.aclose()
    assert run.status is RunStatus.FAILED
    assert stage.attempt == 2, "retried per its policy, not by lease expiry"
    assert stage.error is not None and stage.error.type == "ValueError"
    assert stage.error.message.startswith("bad")
