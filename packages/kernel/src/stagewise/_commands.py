"""Commands (imperative) and their results.

Each command is a frozen model with a `type` discriminator and exactly one handler in the
kernel. `Kernel.dispatch` takes the model or the equivalent dict (`{"type": "run.create",
...}`); anything that does not validate is refused with `InvalidCommandError` before a
handler runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

from stagewise._query import METADATA_KEY
from stagewise._records import JobMessage
from stagewise._results import *  # noqa: F403  (the results, re-exported with the commands)
from stagewise._results import Message

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


# --- commands ------------------------------------------------------------------------------


class RunCreate(Message):
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


class RunClaimPending(Message):
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


class JobExecute(Message):
    """Execute one delivered job: fence, run user code, record, advance."""

    type: Literal["job.execute"] = "job.execute"
    job: JobMessage
    worker_id: Ident
    chain: bool = False
    """Eager dispatch: the caller executes `JobExecuteResult.next_job` at once, so the
    transaction that records this stage may also start a stage that it makes ready (the
    next stage of the same run) for this worker, instead of enqueueing its job."""


class RunTransition(Message):
    """Decide what comes next for a run: next group, completed, failed, or nothing."""

    type: Literal["run.transition"] = "run.transition"
    run_id: Ident


class StagePollSuspended(Message):
    """Check up to `limit` due suspended stages."""

    type: Literal["stage.pollSuspended"] = "stage.pollSuspended"
    limit: Limit = 50
    poller_id: Ident = "poller"


class LeaseReapStale(Message):
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


class OutboxFlush(Message):
    """Deliver pending events to the sink and plugins."""

    type: Literal["outbox.flush"] = "outbox.flush"
    limit: Limit = 200
    flusher_id: Ident = "flusher"


class RunCancel(Message):
    type: Literal["run.cancel"] = "run.cancel"
    run_id: Ident
    reason: Annotated[str, StringConstraints(max_length=2000)] | None = None


class RunSignal(Message):
    """Send a signal to a run: the stage waiting on `topic` takes it at once (and the run
    goes on), or it waits in the run's mailbox for the next wait on `topic` (first sent,
    first taken). The same `idempotency_key` twice stores one signal."""

    type: Literal["run.signal"] = "run.signal"
    run_id: Ident
    topic: Ident
    payload: Any = None
    idempotency_key: Ident | None = None


class RunPurge(Message):
    """Delete up to `limit` finished runs (COMPLETED, FAILED, CANCELLED) that finished before
    `finished_before`, oldest first, with everything of theirs: stage rows, events and their
    deliveries, log lines, idempotency keys and blobs. With `archive`, each run is first
    written to the blob store as one JSON document (`archive/<workflow>/<run_id>.json`).
    One short transaction: call again while `RunPurgeResult.more`."""

    type: Literal["run.purge"] = "run.purge"
    finished_before: AwareDatetime
    limit: Limit = 500
    archive: bool = False


class RunRerunFrom(Message):
    """Run a finished run again from `stage_id`: that stage and every later one."""

    type: Literal["run.rerunFrom"] = "run.rerunFrom"
    run_id: Ident
    stage_id: Ident


class PluginReplayDLQ(Message):
    """Put dead-lettered deliveries back for the next flush (all, or one consumer's, or
    some events')."""

    type: Literal["plugin.replayDLQ"] = "plugin.replayDLQ"
    plugin_id: Ident | None = None
    event_ids: list[Ident] | None = None


class JobHeartbeat(Message):
    """Extend a running attempt's lease; says whether its run was cancelled."""

    type: Literal["job.heartbeat"] = "job.heartbeat"
    job: JobMessage
    worker_id: Ident


class JobRelease(Message):
    """Give back a running attempt this worker cannot finish (a graceful shutdown past its
    drain deadline): the same attempt is queued again at once for another worker, and does
    not count against the retry policy. Code still running it in this process is told to
    stop (`ctx.cancelled`) and its result will be refused."""

    type: Literal["job.release"] = "job.release"
    job: JobMessage
    worker_id: Ident


class StreamWrite(Message):
    """Append `value` (JSON) to the run's stream `key` for the attempt `job` is running
    (what `ctx.write_stream` sends): written at once, numbered after the stream's last
    item; refused with `LeaseLost` when the job no longer holds its stage, with
    `StreamClosedError` once the stream is closed. (A close is written with the outcome of
    the attempt that closed it: `ctx.close_stream`.)"""

    type: Literal["stream.write"] = "stream.write"
    job: JobMessage
    key: Ident
    value: Any = None


class WorkerBeat(Message):
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


class WorkerStop(Message):
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
    | RunSignal
    | RunPurge
    | RunRerunFrom
    | PluginReplayDLQ
    | JobHeartbeat
    | JobRelease
    | StreamWrite
    | WorkerBeat
    | WorkerStop,
    Field(discriminator="type"),
]

COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)
