"""The rows the kernel reads and writes through its ports.

These are plain frozen dataclasses, not pydantic models: they cross the port boundary on
every hot-path call and are built from database rows, so they carry no validation cost.
Adapters store them field by field and build them back; the kernel changes them only with
`dataclasses.replace`. Every JSON-valued field holds JSON-compatible Python values (dict,
list, str, int, float, bool, None) that `json.dumps` accepts as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from stagewise._job_message import JobMessage as JobMessage
from stagewise._states import RunStatus, StageStatus

Json = Any
"""A JSON-compatible value (what `json.loads` returns)."""

GONE_AFTER = 2.5
"""Beat intervals of silence after which a worker is presumed gone (`WorkerRecord`)."""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A failure, as stored and reported: never an exception object."""

    type: str
    message: str
    retryable: bool = True
    traceback: str | None = None

    def to_json(self) -> dict[str, Json]:
        return {
            "type": self.type,
            "message": self.message,
            "retryable": self.retryable,
            "traceback": self.traceback,
        }

    @classmethod
    def from_json(cls, data: dict[str, Json] | None) -> ErrorInfo | None:
        if data is None:
            return None
        return cls(
            type=data["type"],
            message=data["message"],
            retryable=bool(data.get("retryable", True)),
            traceback=data.get("traceback"),
        )


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    workflow_id: str
    status: RunStatus
    input: Json
    config: dict[str, Json]
    """Resolved config for every stage, keyed by stage id (defaults filled in)."""
    created_at: datetime
    updated_at: datetime
    priority: int = 0
    current_group: int = -1
    """Index of the execution group in progress; -1 before the run starts."""
    event_seq: int = 0
    """The last per-run event sequence number handed out (events are 1, 2, 3...)."""
    output: Json = None
    output_ref: str | None = None
    """Blob key of the output when it was too large to keep inline."""
    error: ErrorInfo | None = None
    idempotency_key: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    version: int = 1
    """Bumped by one in every transaction that changes the run or any of its stages: the
    expected version of a write (`RunWrite`), so that no change is ever made on top of a
    state its maker did not see."""
    workflow_version: str | None = None
    """The version of the workflow the run was created with: only that plan ever drives it
    (None: created before versions were recorded; the newest registered version drives
    it)."""
    attempts_before: dict[str, int] = field(default_factory=dict)
    """After a rerun: the last attempt number of each stage it reset or removed, so that
    the stage's next row goes on from there (attempt numbers are never used twice)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Labels given at creation (`RunCreate.metadata`), for finding runs: never changed."""
    deadline: datetime | None = None
    """When the run must have finished (`RunCreate.deadline`, the workflow's `timeout`):
    maintenance fails it then, if it has not ended (None: no deadline)."""
    signal_seq: int = 0
    """The last number handed to a signal sent to the run (signals are 1, 2, 3...)."""


@dataclass(frozen=True, slots=True)
class StageRecord:
    run_id: str
    stage_id: str
    group_index: int
    status: StageStatus
    created_at: datetime
    updated_at: datetime
    attempt: int = 1
    """The attempt that is pending, running or was last run (1-based). Numbers are never
    used twice for a stage: a rerun goes on counting, and so does a drain's release."""
    uncounted: int = 0
    """How many of the numbers before `attempt` do not count against the retry policy:
    attempts given back at a drain (`release`) and every attempt before the last rerun. The
    policy has seen `attempt - uncounted` attempts."""
    job_id: str | None = None
    """Fencing token: the job delivery that holds the current lease (or a poller's claim)."""
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    due_at: datetime | None = None
    """PENDING/RETRYING: when the attempt may start; SUSPENDED: when to poll next."""
    enqueued_at: datetime | None = None
    """When the current attempt's job was last handed to the transport."""
    suspend_state: Json = None
    """SUSPENDED: `{"state": <what execute returned in Suspend>, "poll_interval": s,
    "max_wait": s}`."""
    suspend_deadline: datetime | None = None
    """SUSPENDED: when `max_wait` runs out."""
    output: Json = None
    output_ref: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    """Artifact name -> blob key."""
    error: ErrorInfo | None = None
    progress: float | None = None
    progress_message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def key(self) -> str:
        return f"{self.run_id}/{self.stage_id}"


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event as the outbox stores it: the envelope plus the event's own fields."""

    event_id: str
    run_id: str
    seq: int
    type: str
    occurred_at: datetime
    payload: dict[str, Json]
    """The event serialized by `Event.model_dump(mode="json")`, envelope fields included."""


DeliveryStatus = Literal["pending", "delivered", "dead"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """The delivery of one event to one consumer (the event sink, or one plugin).

    Deliveries of one (consumer, run) pair go out strictly in `seq` order: a pending one
    blocks the later ones until it is delivered or dead-lettered.
    """

    event_id: str
    consumer: str
    run_id: str
    seq: int
    status: DeliveryStatus = "pending"
    attempts: int = 0
    next_attempt_at: datetime | None = None
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    delivery: Delivery
    event: EventRecord


IdempotencyState = Literal["in_progress", "completed"]


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    scope: str
    key: str
    fingerprint: str
    """A hash of the request, to tell a replay from a different request reusing the key."""
    state: IdempotencyState
    created_at: datetime
    expires_at: datetime
    """An `in_progress` holder past this time is presumed dead and may be taken over."""
    result: Json = None


@dataclass(frozen=True, slots=True)
class SignalRecord:
    """A signal sent to a run (`run.signal`): kept in the run's mailbox until a wait on its
    topic consumes it (FIFO per topic, by `seq`); each is consumed by exactly one wait."""

    run_id: str
    seq: int
    """Its number within the run (1, 2, 3... in the order sent, under the run's lock)."""
    signal_id: str
    topic: str
    payload: Json
    sent_at: datetime
    idempotency_key: str | None = None
    consumed_by: str | None = None
    """The stage whose wait took it (None while it waits in the mailbox)."""
    consumed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RunValueRecord:
    """A value a run published under a key (`ctx.set_event`): the latest one set by an
    attempt whose outcome was recorded (a failed or fenced attempt publishes nothing)."""

    run_id: str
    key: str
    value: Json
    stage_id: str
    attempt: int
    set_at: datetime


@dataclass(frozen=True, slots=True)
class StreamItemRecord:
    """One item of a run's stream (`ctx.write_stream`): written at once, in order, under
    the run's lock, by the attempt `attempt` of `stage_id`. `offset` counts from 0 per
    (run, key); the item that closes the stream (`ctx.close_stream`) is the last one, with
    `closed` true and no value."""

    run_id: str
    key: str
    offset: int
    value: Json
    stage_id: str
    attempt: int
    written_at: datetime
    closed: bool = False


@dataclass(frozen=True, slots=True)
class LogRecord:
    run_id: str
    stage_id: str | None
    attempt: int | None
    level: str
    message: str
    fields: dict[str, Json]
    at: datetime

    def line(self, id: int) -> LogLine:
        """This record as read back, stored under `id`."""
        fields = (self.run_id, self.stage_id, self.attempt, self.level, self.message)
        return LogLine(*fields, self.fields, self.at, id)


@dataclass(frozen=True, slots=True)
class LogLine(LogRecord):
    """A log line as stored: the record, and its place in the log. `id` grows with every
    line written and, for one run, in the order its lines were committed (they are written
    under the run's lock), so "the lines after `id`" misses none and repeats none."""

    id: int


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker process as the fleet sees it: what it is, what it can run, when it was last
    heard of (on the database's clock)."""

    worker_id: str
    host: str
    pid: int
    started_at: datetime
    last_seen_at: datetime
    beat_interval: float
    """Seconds between its beats: it is presumed gone after a few of them without one."""
    streak_since: datetime
    """Since when it has beaten without a gap: what it saw of the database is current from
    then on (see `lease.reapStale`)."""
    slots: int = 0
    workflows: tuple[tuple[str, str], ...] = ()
    """The (workflow id, version) pairs it has registered."""
    software: str = ""
    """The stagewise version it runs."""
    stopped_at: datetime | None = None
    """When it stopped cleanly (it gave its attempts back first)."""

    def is_live(self, now: datetime) -> bool:
        """Whether it beat recently enough to count as running: within `GONE_AFTER` of its
        beat intervals (see `_workers` for when others take its attempts over)."""
        if self.stopped_at is not None:
            return False
        return (now - self.last_seen_at).total_seconds() <= GONE_AFTER * self.beat_interval


@dataclass(frozen=True, slots=True)
class RunWrite:
    """A changed run row and the version it was read at: written only if the stored row is
    still at `expected_version` (and then `run.version` is `expected_version + 1`)."""

    run: RunRecord
    expected_version: int

    def __post_init__(self) -> None:
        if self.run.version != self.expected_version + 1:
            raise ValueError(
                f"run {self.run.run_id!r} written at version {self.run.version} over "
                f"{self.expected_version}: a write moves a run to the next version"
            )


@dataclass(frozen=True, slots=True)
class Changeset:
    """Everything one transaction writes, as rows: `Transaction.apply` takes it whole.

    Inserts fail with `DuplicateRecordError` on a key that exists (a run, an event, a
    delivery, an idempotency key); a `RunWrite` whose run is missing or no longer at its
    expected version fails with `ConcurrentUpdateError`; stage rows are upserts;
    `deleted_stages` and `stages` never name the same row. A changeset that fails writes
    nothing, and nothing else of its transaction commits either.
    """

    new_runs: tuple[RunRecord, ...] = ()
    runs: tuple[RunWrite, ...] = ()
    stages: tuple[StageRecord, ...] = ()
    deleted_stages: tuple[tuple[str, str], ...] = ()
    """(run_id, stage_id) of stage rows to delete."""
    events: tuple[EventRecord, ...] = ()
    deliveries: tuple[Delivery, ...] = ()
    logs: tuple[LogRecord, ...] = ()
    idempotency: tuple[IdempotencyRecord, ...] = ()
    signals: tuple[SignalRecord, ...] = ()
    """Signal rows: upserts on (run_id, seq)."""
    values: tuple[RunValueRecord, ...] = ()
    """Published values: upserts on (run_id, key) (the latest wins)."""
    stream_items: tuple[StreamItemRecord, ...] = ()
    """Stream items: inserts on (run_id, key, offset)."""

    def __bool__(self) -> bool:
        return bool(
            self.new_runs
            or self.runs
            or self.stages
            or self.deleted_stages
            or self.events
            or self.deliveries
            or self.logs
            or self.idempotency
            or self.signals
            or self.values
            or self.stream_items
        )


def with_stages(
    runs: list[RunRecord], stages: list[StageRecord]
) -> list[tuple[RunRecord, list[StageRecord]]]:
    """Each run with its stage rows (kept in the order given), as `RunStore.load` returns
    them."""
    by_run: dict[str, list[StageRecord]] = {run.run_id: [] for run in runs}
    for stage in stages:
        if stage.run_id in by_run:
            by_run[stage.run_id].append(stage)
    return [(run, by_run[run.run_id]) for run in runs]
