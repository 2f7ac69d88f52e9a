"""Durable waits: stages that wait without user code and without holding anything.

A wait is an async-batch stage whose two halves the kernel provides. Its job runs once, to
work out what it waits for, and returns a `Suspend`: the stage is SUSPENDED with the time
it is due stored on its row (`due_at`, under the partial index of suspended stages), its
job slot is free, and nothing about it runs until it is due. Maintenance
(`stage.pollSuspended`) picks it up then, on any worker, and resumes it; the wake-up is on
time because the commit that suspended it leaves a Scheduler hint for that moment (a host
whose hints were lost, a restarted one, finds it on its fallback poll). On a `FakeClock`
the test driver jumps straight to it.

Why a job at all, when a sleep's length is known when its group starts: `until(ctx)` needs
a context (earlier outputs, the run's input) and may be user code, and one path for every
wait keeps the aggregate's rules as they are (an attempt starts, suspends, resumes); the
job costs two short transactions at the start of a wait, none while it lasts.

A job retried before its suspension committed (a crash in between) works out the wake time
again: a `duration` then counts from the retry. Once the stage is suspended its wake time
is on the row and is never recomputed.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from stagewise._errors import SignalTimeoutError, WorkflowDefinitionError
from stagewise._stages import (
    NotReady,
    Ready,
    RetryPolicy,
    Seconds,
    SignalSpec,
    Stage,
    Suspend,
    _check_id,
    _check_model,
    define_async_batch_stage,
    to_seconds,
)

if TYPE_CHECKING:
    from stagewise._context import StageContext

Until = Callable[["StageContext"], datetime] | Callable[["StageContext"], Awaitable[datetime]]


def define_sleep_stage(
    *,
    id: str,
    duration: Seconds | None = None,
    until: Until | None = None,
    name: str | None = None,
    description: str | None = None,
    retry: RetryPolicy | None = None,
    requires: Sequence[str] = (),
) -> Stage:
    """A stage that waits, durably, for a length of time or until a moment.

    Give exactly one of `duration` (seconds or a timedelta) or `until`, a function of the
    stage's context (`def` or `async def`, called once when the sleep begins) returning an
    aware datetime. The stage is SUSPENDED while it sleeps, holding no job slot; a crash or
    a deploy meanwhile loses nothing. Its output is its input, passed through, so it can
    sit between two stages without changing what the second one gets. A moment already
    past completes it at once.

    Raises:
        WorkflowDefinitionError: neither or both of `duration` and `until`; a duration that
            is not positive; an `until` that is not callable. When the sleep begins, an
            `until` that returns anything but an aware datetime fails the stage with it
            (not retried).
    """
    _check_id(id)
    if (duration is None) == (until is None):
        raise WorkflowDefinitionError(f"sleep stage {id!r}: give exactly one of duration or until")
    seconds = to_seconds(duration, f"sleep stage {id!r} duration")
    if until is not None and not callable(until):
        raise WorkflowDefinitionError(f"sleep stage {id!r}: until must be callable")

    async def fall_asleep(ctx: StageContext) -> Any:
        now = ctx.now()
        if seconds is not None:
            wake = now + timedelta(seconds=seconds)
        else:
            assert until is not None
            wake = _aware(id, await _call(until, ctx))
        left = (wake - now).total_seconds()
        if left <= 0:
            return ctx.input
        return Suspend(state={"wake_at": wake.isoformat()}, poll_interval=left, max_wait=left)

    stage = define_async_batch_stage(
        id=id,
        name=name,
        description=description,
        execute=fall_asleep,
        check_completion=_wake_up,
        retry=retry,
        requires=requires,
    )
    return replace(stage, wait="sleep")


def define_signal_stage(
    *,
    id: str,
    topic: str,
    payload: type[BaseModel] | None = None,
    timeout: Seconds | None = None,
    on_timeout: str = "fail",
    name: str | None = None,
    description: str | None = None,
) -> Stage:
    """A stage that waits, durably, for one signal on `topic` (`RunSignal`: a person's
    approval, a webhook). Its output is the signal's payload, validated against `payload`
    (a pydantic model; None takes any JSON) and stored as JSON.

    A signal sent before the wait begins is kept in the run's mailbox and taken when it
    begins, first sent first; each signal is taken by one wait. While it waits the stage
    is SUSPENDED and holds nothing. After `timeout` (seconds or a timedelta; None: none)
    with no signal, `on_timeout="fail"` fails it with `SignalTimeoutError`, `"continue"`
    completes it with output None; a signal racing its timeout: exactly one wins.

    Raises:
        WorkflowDefinitionError: a bad id or topic, a payload that is not a model class, a
            timeout that is not positive, an `on_timeout` other than "fail" or "continue".
    """
    _check_id(id)
    try:
        _check_id(topic)
    except WorkflowDefinitionError as exc:
        raise WorkflowDefinitionError(f"signal stage {id!r}: topic {exc.message}") from None
    model = _check_model(payload, "payload", id)
    if on_timeout not in ("fail", "continue"):
        raise WorkflowDefinitionError(
            f"signal stage {id!r}: on_timeout must be 'fail' or 'continue', not {on_timeout!r}"
        )
    seconds = to_seconds(timeout, f"signal stage {id!r} timeout")

    async def begin_wait(ctx: StageContext) -> Suspend:
        if seconds is None:  # no due time at all: nothing polls it, only a signal ends it
            return Suspend(state={"topic": topic, "wake_at": None})
        wake = ctx.now() + timedelta(seconds=seconds)
        state = {"topic": topic, "wake_at": wake.isoformat()}
        return Suspend(state=state, poll_interval=seconds, max_wait=seconds)

    async def time_out(state: dict[str, Any], ctx: StageContext) -> Ready | NotReady:
        assert seconds is not None, "a wait without a timeout is never polled"
        left = (datetime.fromisoformat(state["wake_at"]) - ctx.now()).total_seconds()
        if left > 0:
            return NotReady(next_check_in=left)
        if on_timeout == "continue":
            return Ready(None)
        raise SignalTimeoutError(id, topic, seconds)

    stage = define_async_batch_stage(
        id=id,
        name=name,
        description=description,
        execute=begin_wait,
        check_completion=time_out,  # (a timeout fails the stage at once: a poll's verdict)
    )
    return replace(stage, wait="signal", signal=SignalSpec(topic, model, on_timeout))


def wake_time(stage: Stage, suspend: Suspend) -> datetime | None:
    """When a durable wait that `suspend` begins is due: a sleep's end, a signal wait's
    timeout (None for other stages)."""
    if stage.wait is None or not isinstance(suspend.state, dict):
        return None
    wake = suspend.state.get("wake_at")
    return None if wake is None else datetime.fromisoformat(wake)


async def _wake_up(state: dict[str, Any], ctx: StageContext) -> Ready | NotReady:
    """Due: resume with the input passed through (early, as after a clock step back: the
    time left)."""
    left = (datetime.fromisoformat(state["wake_at"]) - ctx.now()).total_seconds()
    return Ready(ctx.input) if left <= 0 else NotReady(next_check_in=left)


async def _call(until: Until, ctx: StageContext) -> Any:
    value = until(ctx)
    return await value if inspect.isawaitable(value) else value


def _aware(stage_id: str, value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise WorkflowDefinitionError(
            f"sleep stage {stage_id!r}: until must return a datetime, not {type(value).__name__}"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise WorkflowDefinitionError(
            f"sleep stage {stage_id!r}: until returned a naive datetime ({value.isoformat()}); "
            "give it a time zone (datetime.now(timezone.utc) + ..., or .replace(tzinfo=...))"
        )
    return value
