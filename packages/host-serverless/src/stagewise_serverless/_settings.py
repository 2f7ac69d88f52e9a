"""Serverless host settings: one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerlessSettings:
    """How a `ServerlessHost` spends one invocation.

    Every duration is in seconds. Nothing here is state: two hosts built with the same
    settings behave the same whatever ran before them.
    """

    safety_margin: float = 5.0
    """Time kept free before a deadline: to record the last outcome, answer the platform and
    shut down cleanly. Nothing is started inside it."""
    job_time_budget: float = 30.0
    """The time a job is assumed to need when its stage has no `timeout`. A job starts only
    if its stage's `timeout` (or this budget) plus `safety_margin` fits before the deadline;
    one that does not is left to the queue for an invocation with more time."""
    heartbeats: bool = True
    """Extend a running attempt's lease while its code runs (a task scoped to the job: it
    never outlives `handle_job`). Without it, a stage that runs longer than the kernel's
    `lease_seconds` is reaped by the next maintenance tick and its result refused."""
    heartbeat_interval: float | None = None
    """Seconds between heartbeats; None means a third of the kernel's `lease_seconds`."""
    redeliver_after: float = 15.0
    """When a delivery could not be processed (a transient error) and the host itself gives
    it back to a pull transport, it becomes deliverable again after this many seconds."""
    concurrency: int = 1
    """Jobs `process_available_jobs` runs at once (user code of async stages overlaps; sync
    stages run on the kernel's thread pool)."""
    claim_limit: int = 10
    """Runs one maintenance tick starts at most."""
    poll_limit: int = 50
    """Suspended stages one maintenance tick checks at most."""
    reap_limit: int = 100
    """Expired leases one maintenance tick reaps at most."""
    flush_limit: int = 200
    """Outbox deliveries one maintenance tick publishes at most."""
    jobs_after_tick: int = 0
    """Jobs the scheduled maintenance entry point processes from the job transport after its
    tick (for deployments whose queue is the database: a cron alone then runs everything).
    0 for a push queue such as SQS, whose messages arrive through their own entry point."""

    def __post_init__(self) -> None:
        if self.safety_margin < 0 or self.job_time_budget < 0:
            raise ValueError("safety_margin and job_time_budget must not be negative")
        if self.heartbeat_interval is not None and self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive (or None for the default)")
        if self.redeliver_after < 0:
            raise ValueError("redeliver_after must not be negative")
        for name in ("claim_limit", "poll_limit", "reap_limit", "flush_limit"):
            value = getattr(self, name)
            if not 1 <= value <= 10_000:
                raise ValueError(f"{name} must be between 1 and 10000, got {value}")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.jobs_after_tick < 0:
            raise ValueError("jobs_after_tick must not be negative")
