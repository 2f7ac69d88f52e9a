"""Stage definitions: what a stage is, what it may return, and how it is retried."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from stagewise._errors import WorkflowDefinitionError

if TYPE_CHECKING:
    from stagewise._context import StageContext

Seconds = float | int | timedelta


def to_seconds(value: Seconds | None, what: str) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise WorkflowDefinitionError(f"{what} must be positive, got {value!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class StageResult:
    """What a stage may return instead of a bare output, to report metrics and artifacts.

    `artifacts` maps a name to bytes, str or a JSON-compatible value; each is kept in the
    blob store under the run's key space and listed on the stage.
    """

    output: Any = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    artifacts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Suspend:
    """Returned by an async-batch stage's `execute`: wait for outside work to finish.

    The stage is SUSPENDED; `check_completion(state, ctx)` is called every `poll_interval`
    (or the `next_check_in` it asks for) until it returns `Ready`, raises, or `max_wait`
    runs out, which fails the stage.
    """

    state: Any = None
    poll_interval: Seconds = 60.0
    max_wait: Seconds = timedelta(days=1)

    def __post_init__(self) -> None:
        to_seconds(self.poll_interval, "Suspend.poll_interval")
        to_seconds(self.max_wait, "Suspend.max_wait")


@dataclass(frozen=True, slots=True)
class Ready:
    """`check_completion` says the outside work is done; `output` is the stage's output."""

    output: Any = None


@dataclass(frozen=True, slots=True)
class NotReady:
    """`check_completion` says not yet; check again after `next_check_in` (or the stage's
    poll interval when None)."""

    next_check_in: Seconds | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing stage is retried.

    Attempt n (n >= 2) starts `initial_backoff * multiplier**(n-2)` seconds after attempt
    n-1 failed, capped at `max_backoff`, spread by +/- `jitter` (a fraction). Exceptions of a
    `non_retryable` type, and validation errors, fail the stage at once.
    """

    max_attempts: int = 3
    initial_backoff: float = 1.0
    multiplier: float = 2.0
    max_backoff: float = 300.0
    jitter: float = 0.1
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise WorkflowDefinitionError("RetryPolicy.max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise WorkflowDefinitionError(
                "RetryPolicy needs initial_backoff >= 0, max_backoff >= 0 and multiplier >= 1"
            )
        if not 0 <= self.jitter <= 1:
            raise WorkflowDefinitionError("RetryPolicy.jitter is a fraction between 0 and 1")

    def backoff(self, failed_attempt: int, seed: str) -> float:
        """Seconds to wait before the attempt after `failed_attempt`.

        Jitter is derived from `seed` (run, stage and attempt), not from a random source, so
        the kernel stays deterministic under a fake clock and replays the same schedule.
        """
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (failed_attempt - 1))
        if self.jitter == 0 or base == 0:
            return base
        digest = hashlib.blake2b(seed.encode(), digest_size=8).digest()
        unit = int.from_bytes(digest, "big") / 2**64  # in [0, 1)
        return max(0.0, base * (1 + self.jitter * (2 * unit - 1)))

    def is_retryable(self, exc: BaseException) -> bool:
        return not isinstance(exc, self.non_retryable)


DEFAULT_RETRY = RetryPolicy()

ExecuteFn = Callable[["StageContext"], Any]
CheckFn = Callable[[Any, "StageContext"], Any]


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """What a signal stage waits for (`define_signal_stage`)."""

    topic: str
    payload: type[BaseModel] | None
    on_timeout: str


@dataclass(frozen=True, slots=True, eq=False)
class Stage:
    """A defined stage. Build one with `define_stage` or `define_async_batch_stage`."""

    id: str
    name: str
    description: str | None
    input: type[BaseModel] | None
    output: type[BaseModel] | None
    config: type[BaseModel] | None
    execute: ExecuteFn
    retry: RetryPolicy
    timeout: float | None
    requires: tuple[str, ...]
    check_completion: CheckFn | None = None
    wait: str | None = None
    """What a durable wait waits for ("sleep", "signal"), for a stage the kernel resumes
    itself (`_waits`); None for stages of user code."""
    signal: SignalSpec | None = None
    """A signal stage's topic, payload model and what a timeout does."""

    @property
    def is_async_batch(self) -> bool:
        return self.check_completion is not None

    @property
    def kind(self) -> str:
        """What kind of stage it is, as a workflow's version fingerprint sees it."""
        if self.wait is not None:
            return self.wait
        return "async_batch" if self.is_async_batch else "code"

    @property
    def execute_is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.execute)

    def __repr__(self) -> str:
        return f"Stage({self.id!r})"


def _check_model(value: object, what: str, stage_id: str) -> type[BaseModel] | None:
    if value is None:
        return None
    if isinstance(value, type) and issubclass(value, BaseModel):
        return value
    raise WorkflowDefinitionError(f"stage {stage_id!r}: {what} must be a pydantic model class")


def define_stage(
    *,
    id: str,
    name: str | None = None,
    description: str | None = None,
    input: type[BaseModel] | None = None,
    output: type[BaseModel] | None = None,
    config: type[BaseModel] | None = None,
    execute: Callable[[StageContext], Any] | Callable[[StageContext], Awaitable[Any]],
    retry: RetryPolicy | None = None,
    timeout: Seconds | None = None,
    requires: Sequence[str] = (),
) -> Stage:
    """Define a stage.

    Args:
        id: Unique within its workflow; letters, digits, `_`, `-` and `.`.
        execute: `def` or `async def` taking a `StageContext`; returns the output (a model
            or dict validated against `output`), a `StageResult`, or for async-batch stages
            a `Suspend`. A plain `def` runs on a bounded thread pool, never on the loop.
        retry: Defaults to `RetryPolicy()` (3 attempts, exponential backoff).
        timeout: Seconds (or a timedelta) one attempt may run; a timeout is a retryable
            failure.
        requires: Ids of earlier stages whose outputs this stage reads with
            `ctx.require`; checked when the workflow is built.

    Raises:
        WorkflowDefinitionError: for a bad id, a non-model schema, a non-callable execute.
    """
    _check_id(id)
    if not callable(execute):
        raise WorkflowDefinitionError(f"stage {id!r}: execute must be callable")
    return Stage(
        id=id,
        name=name or id,
        description=description,
        input=_check_model(input, "input", id),
        output=_check_model(output, "output", id),
        config=_check_model(config, "config", id),
        execute=execute,
        retry=retry or DEFAULT_RETRY,
        timeout=to_seconds(timeout, f"stage {id!r} timeout"),
        requires=tuple(requires),
    )


def define_async_batch_stage(
    *,
    id: str,
    name: str | None = None,
    description: str | None = None,
    input: type[BaseModel] | None = None,
    output: type[BaseModel] | None = None,
    config: type[BaseModel] | None = None,
    execute: Callable[[StageContext], Any] | Callable[[StageContext], Awaitable[Any]],
    check_completion: Callable[[Any, StageContext], Any]
    | Callable[[Any, StageContext], Awaitable[Any]],
    retry: RetryPolicy | None = None,
    timeout: Seconds | None = None,
    requires: Sequence[str] = (),
) -> Stage:
    """Define a stage that may hand work to an outside system and wait for it.

    `execute` returns `Suspend(state=..., poll_interval=..., max_wait=...)` (or an output
    directly, when there is nothing to wait for). `check_completion(state, ctx)` returns
    `Ready(output=...)` or `NotReady(next_check_in=...)`, or raises to fail the stage. It runs
    outside any database transaction, like `execute`.

    Raises:
        WorkflowDefinitionError: as `define_stage`, or a non-callable check_completion.
    """
    if not callable(check_completion):
        raise WorkflowDefinitionError(f"stage {id!r}: check_completion must be callable")
    stage = define_stage(
        id=id,
        name=name,
        description=description,
        input=input,
        output=output,
        config=config,
        execute=execute,
        retry=retry,
        timeout=timeout,
        requires=requires,
    )
    return replace(stage, check_completion=check_completion)


_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def _check_id(value: object) -> None:
    if not isinstance(value, str) or not value or len(value) > 128 or set(value) - _ID_CHARS:
        raise WorkflowDefinitionError(
            f"id {value!r} is not valid: use 1-128 letters, digits, '_', '-' or '.'"
        )
