"""The results of commands (`Kernel.dispatch` returns one per command; `_commands` holds
the commands and re-exports these)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from stagewise._records import JobMessage
from stagewise._states import RunStatus

__all__ = [
    "CommandResult",
    "HeartbeatResult",
    "JobExecuteResult",
    "JobReleaseResult",
    "LeaseReapResult",
    "OutboxFlushResult",
    "PluginReplayResult",
    "RunCancelResult",
    "RunClaimPendingResult",
    "RunCreateResult",
    "RunPurgeResult",
    "RunRerunResult",
    "RunSignalResult",
    "RunTransitionResult",
    "StagePollResult",
    "StreamWriteResult",
    "StrandedRuns",
    "WorkerBeatResult",
    "WorkerStopResult",
]


class Message(BaseModel):
    """What every command and result is: frozen, and refusing unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RunCreateResult(Message):
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


class RunClaimPendingResult(Message):
    run_ids: list[str]
    jobs_enqueued: int
    started_jobs: list[JobMessage] = []
    """With `take`: stages started for the worker (RUNNING, lease taken), as with
    `JobExecuteResult.next_job`; if the worker dies first, their leases expire and
    `lease.reapStale` retries them."""


JobOutcome = Literal["completed", "suspended", "retry", "failed", "cancelled", "lease_lost"]


class JobExecuteResult(Message):
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


class RunTransitionResult(Message):
    run_id: str
    decision: TransitionDecision
    status: RunStatus


class StagePollResult(Message):
    checked: int = 0
    resumed: int = 0
    rescheduled: int = 0
    failed: int = 0
    next_due_at: datetime | None = None
    """When the next suspended stage (a sleep, a poll) not yet due is due, if any."""


class LeaseReapResult(Message):
    retried: int = 0
    failed: int = 0
    released_jobs: int = 0
    requeued: int = 0
    purged: int = 0
    """Finished runs past `KernelSettings.retention` deleted by this pass."""
    timed_out: int = 0
    """Runs failed because they were still unfinished at their deadline."""


class OutboxFlushResult(Message):
    delivered: int = 0
    failed: int = 0
    dead_lettered: int = 0


class RunCancelResult(Message):
    run_id: str
    cancelled: bool
    """False when the run had already finished: cancelling it changed nothing."""
    status: RunStatus


class RunPurgeResult(Message):
    purged: int
    """Runs deleted by this call."""
    archived: int = 0
    """Of those, written to the blob store first."""
    more: bool
    """More runs finished before the cutoff are left (another call purges the next ones)."""


class RunSignalResult(Message):
    run_id: str
    signal_id: str
    consumed_by: str | None
    """The stage that took it at once, or None: it waits in the run's mailbox."""
    duplicate: bool = False
    """The idempotency key named a signal sent before: nothing new was stored."""


class StreamWriteResult(Message):
    offset: int
    """The item's offset in its stream."""


class RunRerunResult(Message):
    run_id: str
    status: RunStatus
    reset_stages: list[str]


class PluginReplayResult(Message):
    replayed: int


class HeartbeatResult(Message):
    lease_expires_at: datetime
    cancelled: bool
    started: bool = True
    """False when the job has not started yet (nothing to extend); the heartbeat is early,
    not late. A lost lease raises `LeaseLost` instead."""


class JobReleaseResult(Message):
    released: bool
    """False when the attempt was no longer this job's to give back (finished, reaped or
    cancelled meanwhile)."""


class StrandedRuns(Message):
    """Unfinished runs of a workflow version that no live worker has registered: they wait,
    untouched, until a worker that has it starts (see docs/deploys.md)."""

    workflow_id: str
    workflow_version: str | None
    """None: runs recorded before versions (any version of the workflow runs them)."""
    runs: int


class WorkerBeatResult(Message):
    gone: list[str]
    """Workers this one now presumes gone: `lease.reapStale` with it as `observer` takes
    their attempts over."""
    stranded: list[StrandedRuns] = Field(default_factory=list)
    """With `survey`: the versions whose runs no live worker can run."""


class WorkerStopResult(Message):
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
    | RunSignalResult
    | RunPurgeResult
    | RunRerunResult
    | PluginReplayResult
    | HeartbeatResult
    | JobReleaseResult
    | StreamWriteResult
    | WorkerBeatResult
    | WorkerStopResult
)
