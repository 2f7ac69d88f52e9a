"""Running user code, outside any transaction, and making sense of what it returned."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ValidationError

from stagewise._context import CancellationToken
from stagewise._decisions import Output
from stagewise._errors import (
    InvalidInputError,
    RunCancelledError,
    StageOutputError,
    StageTimeoutError,
)
from stagewise._ports import Clock
from stagewise._records import ErrorInfo, Json
from stagewise._stages import Stage, StageResult
from stagewise._text import UnstorableValue, encode_json, scrub
from stagewise._workflow import _summary

_TRACEBACK_LIMIT = 8000


class StagePool(ThreadPoolExecutor):
    """The bounded pool sync stages run on, with the number of calls on it whose result the
    event loop has not taken yet (`busy`, counted on the loop: a call stays busy until its
    awaiting task has resumed, so nobody sees zero while a result is still in flight).

    No amount of fake time finishes a call on a thread: a driver on a `FakeClock`
    (`stagewise.testing.run_until_idle`) waits for `busy` calls in real time rather than
    looping, so that a play makes the same calls however slow the machine is."""

    busy: int = 0


async def call_user_code(
    fn: Callable[..., Any],
    *args: Any,
    executor: Executor,
    clock: Clock,
    time_limit: float | None,
    token: CancellationToken,
) -> Any:
    """Call `fn(*args)`: a coroutine function as a task, a plain function on `executor`.

    Raises whatever `fn` raises; `StageTimeoutError` when `time_limit` seconds (on `clock`)
    pass first;
    `RunCancelledError` when the run is cancelled while async code runs (its task is
    cancelled). Sync code cannot be interrupted: it sees `ctx.cancelled` and its result is
    refused when it returns.
    """
    loop = asyncio.get_running_loop()
    work: asyncio.Future[Any]
    if inspect.iscoroutinefunction(fn):
        work = asyncio.ensure_future(fn(*args))
    else:
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        work = asyncio.ensure_future(_on_thread(loop, executor, call))
    watchers: dict[asyncio.Future[Any], str] = {}
    if time_limit is not None:
        watchers[asyncio.ensure_future(clock.sleep(time_limit))] = "timeout"
    if inspect.iscoroutinefunction(fn):
        watchers[asyncio.ensure_future(token.wait())] = "cancel"
    try:
        done, _ = await asyncio.wait({work, *watchers}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        reason = next(watchers[w] for w in done if w in watchers)
        work.cancel()
        if reason == "timeout":
            assert time_limit is not None
            raise StageTimeoutError(getattr(args[-1], "stage_id", "?"), time_limit)
        raise RunCancelledError(getattr(args[-1], "run_id", ""))
    finally:
        for watcher in watchers:
            watcher.cancel()
        if not work.done():
            work.cancel()
        # Let cancelled watchers and tasks finish unwinding before we return.
        await asyncio.gather(*watchers, return_exceptions=True)


async def _on_thread(loop: asyncio.AbstractEventLoop, executor: Executor, call: Any) -> Any:
    pool = executor if isinstance(executor, StagePool) else None
    if pool is not None:
        pool.busy += 1
    try:
        result = await loop.run_in_executor(executor, call)
    finally:
        if pool is not None:
            pool.busy -= 1
    if inspect.isawaitable(result):  # a plain def that returned a coroutine
        return await result
    return result


def normalize_output(stage: Stage, returned: Any) -> Output:
    """Validate what a stage returned against its output model and make it JSON.

    Raises:
        StageOutputError: it does not match the output model, or is not JSON-compatible.
    """
    metrics: dict[str, float] = {}
    artifacts: dict[str, bytes] = {}
    if isinstance(returned, StageResult):
        try:
            metrics = {str(k): float(v) for k, v in returned.metrics.items()}
        except (TypeError, ValueError):
            raise StageOutputError(f"stage {stage.id!r}: metrics must be numbers") from None
        artifacts = {str(k): _artifact_bytes(stage, k, v) for k, v in returned.artifacts.items()}
        returned = returned.output
    return Output(value=validate_value(stage, returned), metrics=metrics, artifacts=artifacts)


def validate_value(stage: Stage, value: Any) -> Json:
    if stage.output is not None:
        try:
            model = stage.output.model_validate(
                value.model_dump() if isinstance(value, BaseModel) else value
            )
        except ValidationError as exc:
            raise StageOutputError(
                f"stage {stage.id!r} returned output that does not match "
                f"{stage.output.__name__}: {_summary(exc)}"
            ) from None
        return model.model_dump(mode="json")
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    ensure_json(value, f"stage {stage.id!r} output")
    return value


def ensure_json(value: Any, what: str) -> bytes:
    """`value` as it is stored (see `_text`), or `StageOutputError` saying why it cannot be."""
    try:
        return encode_json(value)
    except UnstorableValue as exc:
        raise StageOutputError(f"{what} {exc}") from None


def _artifact_bytes(stage: Stage, name: Any, value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    what = f"stage {stage.id!r} artifact {name!r}"
    if isinstance(value, str):  # bytes as they are (a NUL is fine in a blob), but Unicode
        try:
            return value.encode()
        except UnicodeEncodeError:
            raise StageOutputError(f"{what} contains a lone surrogate, not valid Unicode") from None
    return ensure_json(value, what)


def error_info(exc: BaseException, *, retryable: bool) -> ErrorInfo:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ErrorInfo(
        type=type(exc).__qualname__,
        message=scrub(str(exc) or type(exc).__qualname__),
        retryable=retryable,
        traceback=scrub(tb[-_TRACEBACK_LIMIT:]),
    )


def is_retryable(stage: Stage, exc: BaseException) -> bool:
    """Validation errors and the policy's non-retryable types fail a stage at once."""
    if isinstance(exc, InvalidInputError | ValidationError | RunCancelledError):
        return False
    return stage.retry.is_retryable(exc)
