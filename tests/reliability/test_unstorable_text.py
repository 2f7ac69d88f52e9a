"""One rule for text and size, alike on every backend (`stagewise._text`).

PostgreSQL refuses a NUL character in `text` and `jsonb`; no database can store a lone
surrogate as UTF-8; JSON has no NaN or infinity. Data that holds one (run input and config,
a stage's output or suspend state) is refused up front, the same way on memory, SQLite and
PostgreSQL, with the reason; diagnostics (an exception's message, a log line and its fields,
a progress message) are recorded with U+FFFD in its place, since recording what went wrong
must never fail. Each case runs on all three backends.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import BaseModel

from stagewise import (
    InvalidConfigError,
    InvalidRunInputError,
    KernelSettings,
    PayloadTooLargeError,
    RetryPolicy,
    RunCancel,
    RunStatus,
    StageContext,
    StageStatus,
    Suspend,
    WorkflowBuilder,
    define_async_batch_stage,
    define_stage,
)
from stagewise.testing import TestEnvironment
from tests.conftest import Adapters
from tests.contract.factories import logs_of
from tests.contract.test_kernel_scenarios import make_env

BAD = [pytest.param("\x00", id="nul"), pytest.param("\ud800", id="surrogate")]
SAID = {"\x00": "NUL character (U+0000)", "\ud800": "lone surrogate (U+D800)"}


class Conf(BaseModel):
    note: str = ""
    ratio: float = 1.0


def one_stage(execute: Any, **options: Any) -> Any:
    return WorkflowBuilder("one").pipe(define_stage(id="s", execute=execute, **options)).build()


async def ended(env: TestEnvironment) -> tuple[Any, Any]:
    run = await env.run("one")
    stage = (await env.stages(run.run_id))["s"]
    await env.kernel.aclose()
    return run, stage


# --- data: refused, with the reason ------------------------------------------------------


@pytest.mark.parametrize("bad", BAD)
async def test_output_that_cannot_be_stored_fails_the_stage_at_once(
    backend: Adapters, bad: str
) -> None:
    def produce(ctx: StageContext) -> dict[str, Any]:
        return {"text": f"before{bad}after"}

    env = make_env(backend, [one_stage(produce, retry=RetryPolicy(max_attempts=3))])
    run, stage = await ended(env)

    assert (run.status, stage.status) == (RunStatus.FAILED, StageStatus.FAILED)
    assert stage.attempt == 1, "bad output is not retried"
    assert stage.error is not None and stage.error.type == "StageOutputError"
    assert f"stage 's' output contains a {SAID[bad]}" in stage.error.message


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
async def test_nan_and_infinity_in_output_fail_the_stage_alike(
    backend: Adapters, value: float
) -> None:
    env = make_env(backend, [one_stage(lambda ctx: {"x": value})])
    run, stage = await ended(env)

    assert run.status is RunStatus.FAILED and stage.attempt == 1
    assert "contains NaN or an infinity" in stage.error.message


@pytest.mark.parametrize("bad", BAD)
async def test_suspend_state_that_cannot_be_stored_fails_the_stage(
    backend: Adapters, bad: str
) -> None:
    wf = (
        WorkflowBuilder("one")
        .pipe(
            define_async_batch_stage(
                id="s",
                execute=lambda ctx: Suspend(state={"ticket": bad}),
                check_completion=lambda state, ctx: None,
            )
        )
        .build()
    )
    run, stage = await ended(make_env(backend, [wf]))

    assert run.status is RunStatus.FAILED
    assert f"stage 's' suspend state contains a {SAID[bad]}" in stage.error.message


@pytest.mark.parametrize("bad", BAD)
async def test_input_and_config_that_cannot_be_stored_are_refused_and_nothing_is_written(
    backend: Adapters, bad: str
) -> None:
    wf = one_stage(lambda ctx: 1, config=Conf)
    env = make_env(backend, [wf])

    with pytest.raises(InvalidRunInputError, match=re.escape(SAID[bad])):
        await env.create_run("one", {"name": bad})
    with pytest.raises(InvalidConfigError, match="contains a"):
        await env.create_run("one", {}, config={"s": {"note": bad}})
    with pytest.raises(InvalidConfigError, match="NaN or an infinity"):
        await env.create_run("one", {}, config={"s": {"ratio": float("nan")}})
    with pytest.raises(InvalidRunInputError, match="NaN or an infinity"):
        await env.create_run("one", {"x": float("-inf")})

    async with backend.persistence.transaction() as tx:
        assert await tx.runs.find(limit=10) == []
    await env.kernel.aclose()


async def test_config_counts_toward_the_payload_limit(backend: Adapters) -> None:
    wf = one_stage(lambda ctx: 1, config=Conf)
    env = make_env(backend, [wf], settings=KernelSettings(max_payload_bytes=4096))

    with pytest.raises(PayloadTooLargeError, match="run input and config is"):
        await env.create_run("one", {"a": "x" * 1000}, config={"s": {"note": "y" * 4000}})
    await env.create_run("one", {"a": "x" * 1000}, config={"s": {"note": "y" * 2000}})
    await env.kernel.aclose()


# --- size: a cap on output, and a large output stored once -------------------------------


async def test_an_output_over_the_cap_fails_the_stage_and_says_by_how_much(
    backend: Adapters,
) -> None:
    settings = KernelSettings(max_output_bytes=10_000, inline_output_bytes=1000)
    env = make_env(backend, [one_stage(lambda ctx: "x" * 20_000)], settings=settings)
    run, stage = await ended(env)

    assert run.status is RunStatus.FAILED and stage.attempt == 1
    assert "stage 's' output is 20,002 bytes of JSON, over the 10,000 bytes" in stage.error.message


async def test_a_large_output_of_the_last_stage_is_stored_once(backend: Adapters) -> None:
    settings = KernelSettings(inline_output_bytes=1000)
    env = make_env(backend, [one_stage(lambda ctx: {"big": "x" * 50_000})], settings=settings)
    run = await env.run("one")
    stage = (await env.stages(run.run_id))["s"]

    assert run.status is RunStatus.COMPLETED
    assert stage.output_ref is not None and run.output_ref == stage.output_ref
    assert await backend.blob_store.list(f"runs/{run.run_id}/") == [stage.output_ref]
    assert (await env.output(run.run_id))["big"] == "x" * 50_000
    await env.kernel.aclose()


# --- diagnostics: recorded, with U+FFFD --------------------------------------------------


@pytest.mark.parametrize("bad", BAD)
async def test_diagnostics_are_recorded_with_the_replacement_character(
    backend: Adapters, bad: str
) -> None:
    def boom(ctx: StageContext) -> None:
        ctx.log(
            "info",
            f"about to fail{bad}",
            detail=f"field{bad}",
            nan=float("nan"),
            **{f"key{bad}": 1},
        )
        ctx.progress(50, f"half{bad}way")
        raise ValueError(f"bad{bad}byte")

    retry = RetryPolicy(max_attempts=2, initial_backoff=1)
    run, stage = await ended(make_env(backend, [one_stage(boom, retry=retry)]))

    assert run.status is RunStatus.FAILED
    assert stage.attempt == 2, "retried per its policy, not by lease expiry"
    assert stage.error is not None and stage.error.type == "ValueError"
    assert stage.error.message == "bad\ufffdbyte"
    assert stage.progress_message == "half\ufffdway"
    first = (await logs_of(backend, run.run_id))[0]
    assert first.message == "about to fail\ufffd"
    assert first.fields == {"detail": "field\ufffd", "nan": "nan", "key\ufffd": 1}


async def test_a_cancel_reason_with_a_nul_is_recorded_with_the_replacement_character(
    backend: Adapters,
) -> None:
    env = make_env(backend, [one_stage(lambda ctx: 1)])
    run_id = await env.create_run("one")

    await env.kernel.dispatch(RunCancel(run_id=run_id, reason="operator\x00said so"))

    async with backend.persistence.transaction() as tx:
        events = await tx.outbox.events(run_id)
    cancelled = next(e for e in events if e.type == "run.cancelled")
    assert cancelled.payload["reason"] == "operator\ufffdsaid so"
    await env.kernel.aclose()
