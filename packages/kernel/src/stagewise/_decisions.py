"""What the run aggregate (`_run.Run`) takes in and gives back, as plain data.

In: the `Rules` every decision of one transaction shares (the time, where fresh ids come
from, the kernel's settings), and what an attempt produced: an `Output`, a `Suspension`,
or a failure as an `ErrorInfo`, with what it reported meanwhile (`Reports`).

Out: a `Decision`, which is the outcome (what the caller needs to answer its command) and
the `Changes` it makes: rows to write, events, jobs to enqueue or drop, blobs to write or
delete. Nothing in here does anything; the application layer (`_unit.py`)
writes the changes in the transaction and acts on the rest after it commits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Literal, TypeVar

from stagewise._records import (
    EventRecord,
    JobMessage,
    Json,
    LogRecord,
    RunRecord,
    RunValueRecord,
    SignalRecord,
    StageRecord,
    StreamItemRecord,
)
from stagewise._settings import KernelSettings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Rules:
    """What every decision made in one transaction shares."""

    now: datetime
    new_id: Callable[[], str]
    settings: KernelSettings
    command: str
    """The command deciding (named by an `InvalidTransitionError`)."""


# --- in: what an attempt produced ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Output:
    """A stage's validated output, JSON-ready. `ref` is its blob key once it was stored
    there (too large to keep in the row); `value` is kept either way."""

    value: Json
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    ref: str | None = None
    artifact_refs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Suspension:
    """An async-batch stage waits for outside work: check again after `poll_interval`
    seconds, give up after `max_wait`."""

    state: Json
    poll_interval: float
    max_wait: float
    wake_at: datetime | None = None
    """A durable wait's wake time (a sleep's end, a signal wait's timeout): due then,
    exactly (not `poll_interval` after the commit that suspends it, which comes a moment
    after the time was worked out)."""
    wait: str | None = None
    """What a durable wait waits for ("sleep", "signal"); None for an async-batch stage."""

    @property
    def untimed(self) -> bool:
        """Nothing is ever due: no poll, no deadline (a signal wait without a timeout, ended
        only by its signal, a cancel or the run's deadline)."""
        return self.wait == "signal" and self.wake_at is None


@dataclass(frozen=True, slots=True)
class Reports:
    """What an attempt reported since its last write: log lines, the latest progress."""

    logs: tuple[LogRecord, ...] = ()
    progress: tuple[float, str | None] | None = None


NO_REPORTS = Reports()


# --- out: decisions and their changes ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlobWrite:
    key: str
    data: bytes


@dataclass(frozen=True, slots=True)
class StartedAttempt:
    """An attempt a job (`worker_id`'s) now holds, with the run and its stages as they were
    when it started: what building its context needs, with no read of its own."""

    job: JobMessage
    worker_id: str
    run: RunRecord
    stages: dict[str, StageRecord]


@dataclass(frozen=True, slots=True)
class Changes:
    """What one decision changes, as data.

    `run` is the run's row after the decision when anything of the run changed (a change
    to a stage always comes with the run's row: see `_run`); `stages` are stage rows to
    write and `deleted` stage ids to remove (never both for one stage).
    """

    run: RunRecord | None = None
    stages: tuple[StageRecord, ...] = ()
    deleted: tuple[str, ...] = ()
    events: tuple[EventRecord, ...] = ()
    logs: tuple[LogRecord, ...] = ()
    jobs: tuple[JobMessage, ...] = ()
    """Jobs to enqueue."""
    acks: tuple[str, ...] = ()
    """Deliveries to remove from the transport: they are done with."""
    discard_jobs: bool = False
    """Drop every queued job of the run (it ended)."""
    blob_writes: tuple[BlobWrite, ...] = ()
    """Blobs the changes refer to: written before the transaction commits."""
    blob_deletes: tuple[str, ...] = ()
    """Blobs nothing refers to any more: deleted after it commits."""
    signals: tuple[SignalRecord, ...] = ()
    """Signal rows to write: a new one sent, or one a wait consumed."""
    values: tuple[RunValueRecord, ...] = ()
    """Values the run published (`ctx.set_event`), with the outcome that publishes them."""
    stream_items: tuple[StreamItemRecord, ...] = ()
    """Items appended to the run's streams (`ctx.write_stream`), or their closes."""
    stop_attempts: bool = False
    """The run was cancelled: code still running its attempts is told to stop."""


@dataclass(frozen=True, slots=True)
class Decision(Generic[T]):
    outcome: T
    changes: Changes


@dataclass(frozen=True, slots=True)
class RunChanges:
    """Everything a transaction's decisions changed about one run, to write: the run row
    (`expected_version` None for a run created in this transaction) and the rest."""

    changes: Changes
    expected_version: int | None


class ChangeLog:
    """The changes of one transaction, collected by the aggregate as it decides.

    One log per transaction, with a mark where the current decision began: `decision()`
    hands over what was changed since the mark (and moves it), `take()` everything (and
    starts over). A stage written twice is written once, in its last state; the run's row
    likewise. The flags (`discard_jobs`, `stop_attempts`) only ever turn on.
    """

    __slots__ = (
        "_marks",
        "_run_touched",
        "_touched",
        "acks",
        "blob_deletes",
        "blob_writes",
        "deleted",
        "discard_jobs",
        "events",
        "jobs",
        "logs",
        "run",
        "signals",
        "stages",
        "stop_attempts",
        "stream_items",
        "values",
    )

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.run: RunRecord | None = None
        self.stages: dict[str, StageRecord] = {}
        self.deleted: dict[str, None] = {}
        self.events: list[EventRecord] = []
        self.logs: list[LogRecord] = []
        self.jobs: list[JobMessage] = []
        self.acks: list[str] = []
        self.discard_jobs = False
        self.blob_writes: list[BlobWrite] = []
        self.blob_deletes: list[str] = []
        self.signals: list[SignalRecord] = []
        self.values: list[RunValueRecord] = []
        self.stream_items: list[StreamItemRecord] = []
        self.stop_attempts = False
        self._mark()

    def _mark(self) -> None:
        self._touched: dict[str, None] = {}  # stage ids written or deleted since the mark
        self._run_touched = False
        self._marks = (
            len(self.events),
            len(self.logs),
            len(self.jobs),
            len(self.acks),
            len(self.blob_writes),
            len(self.blob_deletes),
            self.discard_jobs,
            self.stop_attempts,
            len(self.signals),
            len(self.values),
            len(self.stream_items),
        )

    @property
    def needs_run(self) -> bool:
        """Whether the current decision changed a stage but not the run's row (which must
        change with it)."""
        return bool(self._touched) and not self._run_touched

    def set_run(self, run: RunRecord) -> None:
        self.run = run
        self._run_touched = True

    def save_stage(self, stage: StageRecord) -> None:
        self.deleted.pop(stage.stage_id, None)
        self.stages[stage.stage_id] = stage
        self._touched[stage.stage_id] = None

    def discard_run_jobs(self) -> None:
        """Drop the run's queued jobs, and forget the ones enqueued earlier in this
        transaction: the transaction writes its discard before its enqueues, so a job an
        earlier decision enqueued (a retry the reaper scheduled a moment before the run
        failed or passed its deadline) would otherwise outlive the run."""
        self.jobs.clear()
        self.discard_jobs = True
        (events, logs, _, acks, writes, deletes, discarded, stopped, signals, values, items) = (
            self._marks
        )
        self._marks = (
            events,
            logs,
            0,
            acks,
            writes,
            deletes,
            discarded,
            stopped,
            signals,
            values,
            items,
        )

    def delete_stage(self, stage_id: str) -> None:
        self.stages.pop(stage_id, None)
        self.deleted[stage_id] = None
        self._touched[stage_id] = None

    def decision(self) -> Changes:
        """What changed since the mark, as data; the mark moves here."""
        # Unpacked by position, not looked up by name: this runs at every decision.
        (events, logs, jobs, acks, writes, deletes, discarded, stopped, signals, values, items) = (
            self._marks
        )
        touched = self._touched
        changes = Changes(
            run=self.run if self._run_touched else None,
            stages=tuple(self.stages[s] for s in touched if s in self.stages),
            deleted=tuple(s for s in touched if s in self.deleted),
            events=tuple(self.events[events:]),
            logs=tuple(self.logs[logs:]),
            jobs=tuple(self.jobs[jobs:]),
            acks=tuple(self.acks[acks:]),
            discard_jobs=self.discard_jobs and not discarded,
            blob_writes=tuple(self.blob_writes[writes:]),
            blob_deletes=tuple(self.blob_deletes[deletes:]),
            stop_attempts=self.stop_attempts and not stopped,
            signals=tuple(self.signals[signals:]),
            values=tuple(self.values[values:]),
            stream_items=tuple(self.stream_items[items:]),
        )
        self._mark()
        return changes

    def take(self) -> Changes:
        """Everything collected since the last `take`, as data; the log starts over."""
        changes = Changes(
            run=self.run,
            stages=tuple(self.stages.values()),
            deleted=tuple(self.deleted),
            events=tuple(self.events),
            logs=tuple(self.logs),
            jobs=tuple(self.jobs),
            acks=tuple(self.acks),
            discard_jobs=self.discard_jobs,
            blob_writes=tuple(self.blob_writes),
            blob_deletes=tuple(self.blob_deletes),
            stop_attempts=self.stop_attempts,
            signals=tuple(self.signals),
            values=tuple(self.values),
            stream_items=tuple(self.stream_items),
        )
        self._clear()
        return changes


# --- outcomes of the aggregate's decisions ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """How a delivery's start went: `started` when this job now holds the stage; otherwise
    `refused` says why not (the stage `completed` already, the run was `cancelled`, or the
    delivery `lost` to another), or `not_before` when it came before its backoff ended."""

    started: StartedAttempt | None = None
    refused: Literal["completed", "cancelled", "lost"] | None = None
    reason: str = ""
    not_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """What became of an attempt's outcome (`outcome` as in `JobExecuteResult`, or `lost`
    when the attempt no longer held its stage)."""

    outcome: Literal["completed", "suspended", "retry", "failed", "cancelled", "lost"]
    error: str | None = None
    retry_after: float | None = None
    replayed: bool = False
    """The outcome was recorded by an earlier try of this same finish."""


@dataclass(frozen=True, slots=True)
class Beat:
    """A heartbeat's answer: the lease now, whether the run was cancelled, whether the
    attempt had started; `lost` says why it no longer holds its stage."""

    lease_expires_at: datetime
    cancelled: bool
    started: bool
    lost: str | None = None
