"""What one invocation reports: a job's result, and the counts of a batch or a tick."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

JobOutcome = Literal["completed", "suspended", "failed", "retry", "cancelled", "lease_lost"]


@dataclass(frozen=True, slots=True)
class JobResult:
    """The result of handling one job delivery.

    `outcome` is the kernel's when it recorded one. Deliveries the kernel never got to see
    are reported as well: a malformed body or an unknown workflow/stage is `failed`, and a
    delivery that could not be processed now (a transient error, or not enough time left)
    is `retry`.

    `redeliver` is the one thing a queue needs to know: True when this delivery must come
    back (it was not processed, or it came before its attempt was due), False when the
    delivery is done with, whatever happened to the stage — including a stage that failed
    for good, or a retry the kernel already enqueued as a new job.
    """

    outcome: JobOutcome
    error: str | None = None
    retry_after: float | None = None
    """For `retry`: seconds until the next attempt (or this delivery) is due."""
    redeliver: bool = False
    replayed: bool = False
    """The stage had already completed: this was a duplicate delivery and ran nothing."""
    job_id: str | None = None
    run_id: str | None = None
    stage_id: str | None = None
    attempt: int | None = None
    """None when the message was too malformed to tell."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class JobCounts:
    """What `process_available_jobs` did. `processed` is the sum of the other four."""

    processed: int = 0
    succeeded: int = 0
    """Completed or suspended (the stage moved on)."""
    failed: int = 0
    """Stages that failed for good, and deliveries that could not be run (unknown ids)."""
    retried: int = 0
    """Attempts that will run again, and deliveries given back to the queue."""
    skipped: int = 0
    """Deliveries that ran nothing: duplicates, stale leases, cancelled runs."""
    stopped_at_deadline: bool = False
    """True when it stopped because the next job would not fit before the deadline."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class MaintenanceCounts:
    """What one maintenance tick did. A step that raised is named in `errors` and the
    others still ran; a step left out for lack of time is named in `skipped`."""

    claimed: int = 0
    """Pending runs started (their first group's jobs enqueued)."""
    suspended_checked: int = 0
    resumed: int = 0
    """Suspended stages whose outside work was ready (their run advanced)."""
    leases_released: int = 0
    """Attempts whose lease had expired: retried or, with no attempts left, failed."""
    requeued: int = 0
    """Jobs made deliverable again: expired transport leases, lost external deliveries."""
    events_flushed: int = 0
    purged: int = 0
    """Finished runs past `KernelSettings.retention` deleted (one batch per tick)."""
    timed_out: int = 0
    """Runs failed because they were still unfinished at their deadline."""
    next_wake_at: datetime | None = None
    """When the next suspended stage is due (a sleep wakes, a poll is due), if any: a tick
    then resumes it, so a platform that can schedule one-off invocations can run the next
    tick at that moment rather than wait for its fixed schedule."""
    errors: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = list(self.errors)
        data["next_wake_at"] = None if self.next_wake_at is None else self.next_wake_at.isoformat()
        data["skipped"] = list(self.skipped)
        return data
