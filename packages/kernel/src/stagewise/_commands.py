"""Commands (imperative) and their results.

Each command is a frozen model with a `type` discriminator and exactly one handler in the
kernel. `Kernel.dispatch` takes the model or the equivalent dict (`{"type": "run.create",
...}`); anything that does not validate is refused with `InvalidCommandError` before a
handler runs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

from stagewise._query import METADATA_KEY
from stagewise._records import JobMessage
from stagewise._states import RunStatus

Ident = Annotated[
    str,
    # No NUL character: PostgreSQL refuses it in text, so it is refused here on every backend.
    StringConstraints(min_length=1, max_length=200, strip_whitespace=False, pattern=r"^[^\x00]*$"),
]
Limit = Annotated[int, Field(ge=1, le=10_000)]
MetadataKey = Annotated[str, StringConstraints(pattern=METADATA_KEY)]
MetadataValue = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00]*$")]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=32)]
"""A run's labels (at most 32): what `Kernel.list_runs(metadata=...)` matches exactly."""


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- commands ------------------------------------------------------------------------------


class RunCreate(_Message):
    """Create a PENDING run; idempotent by `idempotency_key`."""

    type: Literal["run.create"] = "run.create"
    workflow_id: Ident
    input: Any = None
    config: dict[Ident, dict[str, Any]] | None = None
    idempotency_key: Ident | None = None
    priority: Annotated[int, Field(ge=-1_000_000, le=1_000_000)] = 0
    metadata: Metadata = Field(default_factory=dict)
    """Labels kept with the run, to find it by (`Kernel.list_runs(metadata=...)`)."""
    deadline: AwareDatetime | None = None
    """When the run must have finished: still unfinished then, it fails with
    `DeadlineExceededError` (the earlier of this and the workflow's `timeout` applies)."""
    worker_id: Ident | None = None
    """Start at creation (an in-process host): the creating transaction also claims the run
    (RUNNING, its first group's stages created) and starts the first due stage of that group
    for `worker_id` instead of enqueueing its job; the group's other stages are enqueued.
    The stage comes back in `RunCreateResult.started_jobs`; execute it with
    `JobExecute(job=..., worker_id=worker_id, chain=True)`. An idempotent replay starts
    nothing."""


class RunClaimPending(_Message):
    """Start up to `limit` PENDING runs (priority, then age) and enqueue their first jobs."""

    type: Literal["run.claimPending"] = "run.claimPending"
    limit: Limit = 10
    worker_id: Ident | None = None
    take: int = Field(default=0, ge=0, le=10_000)
    """Eager dispatch at claim time: start up to `take` of the claimed runs' first stages
    for `worker_id` in the claiming transaction instead of enqueueing their jobs. They come
    back in `RunClaimPendingResult.started_jobs`; execute each with
    `JobExecute(job=..., worker_id=worker_id, chain=True)`."""

    @model_validator(mode="after")
    def _take_needs_a_worker(self) -> RunClaimPending:
        if self.take and self.worker_id is None:
            raise ValueError("take needs the worker_id the stages are started for")
        return self


class JobExecute(_Message):
    """Execute one delivered job: fence, run user code, record, advance."""

    type: Literal["job.execute"] = "job.execute"
    job: JobMessage
    worker_id: Ident
    chain: bool = False
    """Eager dispatch: the caller executes `JobExecuteResult.next_job` at once, so the
    transaction that records this stage may also start a stage that it makes ready (the
    next stage of the same run) for this worker, instead of enqueueing its job."""


class RunTransition(_Message):
    """Decide what comes next for a run: next group, completed, failed, or nothing."""

    type: Literal["run.transition"] = "run.transition"
    run_id: Ident


class StagePollSuspended(_Message):
    """Check up to `limit` due suspended stages."""

    type: Literal["stage.pollSuspended"] = "stage.pollSuspended"
    limit: Limit = 50
    poller_id: Ident = "poller"


class LeaseReapStale(_Message):
    """Retry or fail attempts whose lease expired; with `worker_id`, every attempt that
    worker holds (a worker restarting under the same id reclaims its own leases at once);
    with `observer` (the worker running this pass), every attempt of a worker it presumes
    gone (silent for a few of its beats while the observer was beating: `_workers`)."""

    type: Literal["lease.reapStale"] = "lease.reapStale"
    limit: Limit = 100
    worker_id: Ident | None = None
    stopping: bool = False
    """With `worker_id`: the worker is stopping (what its drain left), not restarting."""
    observer: Ident | None = None


class OutboxFlush(_Message):
    """Deliver pending events to the sink and plugins."""

    type: Literal["outbox.flush"] = "outbox.flush"
    limit: Limit = 200
    flusher_id: Ident = "flusher"


class RunCancel(_Message):
    type: Literal["run.cancel"] = "run.cancel"
    run_id: Ident
    reason: Annotated[str, StringConstraints(max_length=2000)] | None = None


class RunPurge(_Message):
    """Delete up to `limit` finished runs (COMPLETED, FAILED, CANCELLED) that finished before
    `finished_before`, oldest first, with everything of theirs: stage rows, events and their
    deliveries, log lines, idempotency keys and blobs. With `archive`, each run is first
    written to the blob store as one JSON document (`archive/<workflow>/<run_id>.json`).
    One short transaction: call again while `RunPurgeResult.more`."""

    type: Literal["run.purge"] = "run.purge"
    finished_before: AwareDatetime
    limit: Limit = 500
    archive: bool = False


class RunRerunFrom(_Message):
    """Run a finished run again from `stage_id`: that stage and every later one."""

    type: Literal["run.rerunFrom"] = "run.rerunFrom"
    run_id: Ident
    stage_id: Ident


class PluginReplayDLQ(_Message):
    """Put dead-lettered deliveries back for the next flush (all, or one consumer's, or
    some events')."""

    type: Literal["plugin.replayDLQ"] = "plugin.replayDLQ"
    plugin_id: Ident | None = None
    event_ids: list[Ident] | None = None


class JobHeartbeat(_Message):
    """Extend a running attempt's lease; says whether its run was cancelled."""

    type: Literal["job.heartbeat"] = "job.heartbeat"
    job: JobMessage
    worker_id: Ident


class JobRelease(_Message):
    """Give back a running attempt this worker cannot finish (a graceful shutdown past its
    drain deadline): the same attempt is queued again at once for another worker, and does
    not count against the retry policy. Code still running it in this process is told to
    stop (`ctx.cancelled`) and its result will be refused."""

    type: Literal["job.release"] = "job.release"
    job: JobMessage
    worker_id: Ident


class WorkerBeat(_Message):
    """A worker is alive: write its row (what it is, the workflow versions it has, how often
    it beats), at the database's time."""

    type: Literal["worker.beat"] = "worker.beat"
    worker_id: Ident
    host: Annotated[str, StringConstraints(max_length=200)] = ""
    pid: Annotated[int, Field(ge=0)] = 0
    slots: Annotated[int, Field(ge=0)] = 0
    beat_interval: Annotated[float, Field(gt=0, le=3600)]
    software: Annotated[str, StringConstraints(max_length=100)] = ""
    survey: bool = False
    """Also say which unfinished runs no live worker can run (`WorkerBeatResult.stranded`):
    one grouped read of the runs, so a host asks now and then, not at every beat."""


class WorkerStop(_Message):
    """A worker stopped cleanly (its attempts were given back): nobody takes it over."""

    type: Literal["worker.stop"] = "worker.stop"
    worker_id: Ident


Command = Annotated[
    RunCreate
    | RunClaimPending
    | JobExecute
    | RunTransition
    | StagePollSuspended
    | LeaseReapStale
    | OutboxFlush
    | RunCancel
    | RunPurge
    | RunRerunFrom
    | PluginReplayDLQ
    | JobHeartbeat
    | JobRelease
    | WorkerBeat
    | WorkerStop,
    Field(discriminator="type"),
]

COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)


# --- results -------------------------------------------------------------------------------


class RunCreateResult(_Message):
    run_id: str
    status: RunStatus
    """PENDING, or RUNNING when started at creation (`RunCreate.worker_id`); for a replay,
    the run's status now."""
    created: bool
    """False when an idempotency key replayed an earlier creation."""
    started_jobs: list[JobMessage] = []
    """With `worker_id`: the stage started for the worker (RUNNING, lease taken), as with
    `RunClaimPendingResult.started_jobs`; if the worker dies first, its lease expires and
    `lease.reapStale` retries it."""


class RunClaimPendingResult(_Message):
    run_ids: list[str]
    jobs_enqueued: int
    started_jobs: list[JobMessage] = []
    """With `take`: stages started for the worker (RUNNING, lease taken), as with
    `JobExecuteResult.next_job`; if the worker dies first, their leases expire and
    `lease.reapStale` retries them."""


JobOutcome = Literal["completed", "suspended", "retry", "failed", "cancelled", "lease_lost"]


class JobExecuteResult(_Message):
    outcome: JobOutcome
    run_id: str
    stage_id: str
    attempt: int
    error: str | None = None
    retry_after: float | None = None
    """For `retry`: seconds until the next attempt may start."""
    replayed: bool = False
    """The stage had already completed: this delivery was a duplicate and ran nothing."""
    deferred: bool = False
    """For `retry`: the job arrived before its attempt was due and ran nothing; it was given
    back to the transport for `retry_after` seconds (not a failed attempt)."""
    next_job: JobMessage | None = None
    """With `chain`: a stage this worker now holds (RUNNING, its lease taken in the same
    transaction that recorded this one). Execute it next with the same worker id. It never
    went through the transport: if the worker dies first, its lease expires and
    `lease.reapStale` retries it like any other attempt."""


TransitionDecision = Literal["advanced", "completed", "failed", "noop"]


class RunTransitionResult(_Message):
    run_id: str
    decision: TransitionDecision
    status: RunStatus


class StagePollResult(_Message):
    checked: int = 0
    resumed: int = 0
    rescheduled: int = 0
    failed: int = 0
    next_due_at: datetime | None = None
    """When the next suspended stage (a sleep, a poll) not yet due is due, if any."""


class LeaseReapResult(_Message):
    retried: int = 0
    failed: int = 0
    released_jobs: int = 0
    requeued: int = 0
    purged: int = 0
    """Finished runs past `KernelSettings.retention` deleted by this pass."""
    timed_out: int = 0
    """Runs failed because they were still unfinished at their deadline."""


class OutboxFlushResult(_Message):
    delivered: int = 0
    failed: int = 0
    dead_lettered: int = 0


class RunCancelResult(_Message):
    run_id: str
    cancelled: bool
    """False when the run had already finished: cancelling it changed nothing."""
    status: RunStatus


class RunPurgeResult(_Message):
    purged: int
    """Runs deleted by this call."""
    archived: int = 0
    """Of those, written to the blob store first."""
    more: bool
    """More runs finished before the cutoff are left (another call purges the next ones)."""


class RunRerunResult(_Message):
    run_id: str
    status: RunStatus
    reset_stages: list[str]


class PluginReplayResult(_Message):
    replayed: int


class HeartbeatResult(_Message):
    lease_expires_at: datetime
    cancelled: bool
    started: bool = True
    """False when the job has not started yet (nothing to extend); the heartbeat is early,
    not late. A lost lease raises `LeaseLost` instead."""


class JobReleaseResult(_Message):
    released: bool
    """False when the attempt was no longer this job's to give back (finished, reaped or
    cancelled meanwhile)."""


class StrandedRuns(_Message):
    """Unfinished runs of a workflow version that no live worker has registered: they wait,
    untouched, until a worker that has it starts (see docs/deploys.md)."""

    workflow_id: str
    workflow_version: str | None
    """None: runs recorded before versions (any version of the workflow runs them)."""
    runs: int


class WorkerBeatResult(_Message):
    gone: list[str]
    """Workers this one now presumes gone: `lease.reapStale` with it as `observer` takes
    their attempts over."""
    stranded: list[StrandedRuns] = Field(default_factory=list)
    """With `survey`: the versions whose runs no live worker can run."""


class WorkerStopResult(_Message):
    stopped: bool
    """False when the worker had no row (it never beat)."""


CommandResult = (
    RunCreateResult
    | RunClaimPendingResult
    | JobExecuteResult
    | RunTransitionResult
    | StagePollResult
    | LeaseReapResult
    | OutboxFlushResult
    | RunCancelResult
    | RunPurgeResult
    | RunRerunResult
    | PluginReplayResult
    | HeartbeatResult
    | JobReleaseResult
    | WorkerBeatResult
    | WorkerStopResult
)
