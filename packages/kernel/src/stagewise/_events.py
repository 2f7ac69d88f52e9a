"""Events: what happened, in the past tense.

Every state change appends its events to the outbox in the same transaction, numbered per run
(`seq` 1, 2, 3... with no gaps). `outbox.flush` later delivers them to the event sink and to
each plugin, in per-run order, at least once, with a stable `event_id`. Events carry ids,
states, errors and metrics, not payloads: read outputs from the run itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from stagewise._records import ErrorInfo


class EventError(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str
    message: str
    retryable: bool = True

    @classmethod
    def of(cls, info: ErrorInfo) -> EventError:
        return cls(type=info.type, message=info.message, retryable=info.retryable)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    run_id: str
    workflow_id: str
    seq: int
    occurred_at: datetime


class RunCreated(_Event):
    type: Literal["run.created"] = "run.created"
    priority: int = 0


class RunStarted(_Event):
    type: Literal["run.started"] = "run.started"
    rerun_from: str | None = None


class RunCompleted(_Event):
    type: Literal["run.completed"] = "run.completed"


class RunFailed(_Event):
    type: Literal["run.failed"] = "run.failed"
    stage_id: str | None = None
    error: EventError


class RunCancelled(_Event):
    type: Literal["run.cancelled"] = "run.cancelled"
    reason: str | None = None


class RunSuspended(_Event):
    type: Literal["run.suspended"] = "run.suspended"
    stage_ids: list[str]


class RunSignalled(_Event):
    """A signal reached the run: consumed at once by the stage waiting on its topic
    (`consumed_by`), or kept in the run's mailbox for the next wait on it."""

    type: Literal["run.signalled"] = "run.signalled"
    topic: str
    signal_id: str
    consumed_by: str | None = None


class _StageEvent(_Event):
    stage_id: str
    attempt: int


class StageStarted(_StageEvent):
    type: Literal["stage.started"] = "stage.started"
    worker_id: str | None = None


class StageProgress(_StageEvent):
    type: Literal["stage.progress"] = "stage.progress"
    percent: float
    message: str | None = None


class StageCompleted(_StageEvent):
    type: Literal["stage.completed"] = "stage.completed"
    metrics: dict[str, float] = Field(default_factory=dict)


class StageSuspended(_StageEvent):
    type: Literal["stage.suspended"] = "stage.suspended"
    next_check_at: datetime | None
    """When it is next due (None: never; a signal wait without a timeout)."""
    deadline: datetime | None


class StageWaiting(_StageEvent):
    """A stage began a durable wait (a sleep, or a signal on `topic`): it holds no job slot
    until it wakes at `until` (a sleep's end, a signal wait's timeout; None: a signal wait
    without one), its signal comes, or the run ends. Async-batch stages that wait on
    outside work say `stage.suspended` instead."""

    type: Literal["stage.waiting"] = "stage.waiting"
    wait: Literal["sleep", "signal"]
    topic: str | None = None
    until: datetime | None


class StageRetrying(_StageEvent):
    type: Literal["stage.retrying"] = "stage.retrying"
    next_attempt: int
    retry_at: datetime
    error: EventError


class StageFailed(_StageEvent):
    type: Literal["stage.failed"] = "stage.failed"
    error: EventError


class StageReleased(_StageEvent):
    """A draining worker gave the attempt back unfinished (its body had not run, or was
    cancelled): the stage waits under `next_attempt`, which the retry policy does not
    count."""

    type: Literal["stage.released"] = "stage.released"
    next_attempt: int
    worker_id: str | None = None


class StageCancelled(_StageEvent):
    """The run was cancelled while this attempt was running or suspended: it ends here."""

    type: Literal["stage.cancelled"] = "stage.cancelled"


Event = Annotated[
    RunCreated
    | RunStarted
    | RunCompleted
    | RunFailed
    | RunCancelled
    | RunSuspended
    | RunSignalled
    | StageStarted
    | StageProgress
    | StageCompleted
    | StageSuspended
    | StageWaiting
    | StageRetrying
    | StageFailed
    | StageReleased
    | StageCancelled,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

EVENT_TYPES: frozenset[str] = frozenset(
    cls.model_fields["type"].default
    for cls in (
        RunCreated,
        RunStarted,
        RunCompleted,
        RunFailed,
        RunCancelled,
        RunSuspended,
        RunSignalled,
        StageStarted,
        StageProgress,
        StageCompleted,
        StageSuspended,
        StageWaiting,
        StageRetrying,
        StageFailed,
        StageReleased,
        StageCancelled,
    )
)
