"""Node host settings: one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NodeHostSettings:
    """How a `NodeHost` runs. Every interval is in seconds.

    The polling intervals are fallbacks only: the host wakes at once on the kernel's
    Scheduler hints (a job enqueued, a retry due, a suspended stage due, an event to flush)
    and, on PostgreSQL, on the NOTIFY of jobs enqueued by other processes. The intervals
    bound how long work found by nobody's hint (another worker crashed, a hint was lost)
    can wait.
    """

    concurrency: int = 10
    """Job slots: stage attempts this host runs at once."""
    job_poll_interval: float = 2.0
    """Look for jobs at least this often, even without a wake-up."""
    claim_interval: float = 2.0
    """Claim PENDING runs at least this often (runs created by other processes)."""
    suspended_poll_interval: float = 5.0
    """Look for due suspended stages at least this often."""
    reap_interval: float = 10.0
    """Look for expired leases (crashed workers) at least this often."""
    flush_interval: float = 2.0
    """Deliver outbox events at least this often."""
    flush_batch_window: float = 0.5
    """After a flush, a hint ("new events") waits this long before the next one, so that a
    busy host delivers events in batches instead of one flush per commit."""
    heartbeat_interval: float | None = None
    """Extend the leases of running attempts this often; None means a third of the
    kernel's `lease_seconds`. At most half the lease. Attempts younger than half an interval
    are skipped (their lease is fresh), so short stages cost no heartbeat at all."""
    beat_interval: float = 5.0
    """How often this worker says it is alive (`worker.beat`). A worker silent for two and
    a half of its intervals, while the others can reach the database, is presumed gone and
    its attempts are taken over at once instead of after their leases."""
    claim_batch: int = 20
    poll_batch: int = 50
    reap_batch: int = 100
    flush_batch: int = 200
    step_timeout: float = 300.0
    """A tick step that takes longer than this (a hung database call, a slow
    `check_completion`) is abandoned so that the other steps keep running."""
    drain_timeout: float = 30.0
    """On stop: how long in-flight stages may take to finish before their leases are
    released for another worker (used by `run()` and by `stop()` without an argument)."""
    stop_flush_timeout: float = 10.0
    """On stop, after the drain: how long delivering the outbox's last events may take
    (the run's last `stage.completed` and `run.completed` reach the sink before `stop()`
    returns; what a slow or failing sink did not take is delivered by the next flusher)."""
    reap_own_leases_on_start: bool = True
    """On start, retry at once every attempt the same worker id still holds (this worker
    restarting after a crash). Worker ids must therefore be unique among live workers."""
    listen_timeout: float = 30.0
    """How long one wait for a NOTIFY lasts before it is renewed."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        intervals = {
            "job_poll_interval": self.job_poll_interval,
            "claim_interval": self.claim_interval,
            "suspended_poll_interval": self.suspended_poll_interval,
            "reap_interval": self.reap_interval,
            "flush_interval": self.flush_interval,
            "step_timeout": self.step_timeout,
            "listen_timeout": self.listen_timeout,
            "beat_interval": self.beat_interval,
        }
        if self.heartbeat_interval is not None:
            intervals["heartbeat_interval"] = self.heartbeat_interval
        for name, value in intervals.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.flush_batch_window < 0:
            raise ValueError("flush_batch_window must not be negative")
        for name, value in (
            ("drain_timeout", self.drain_timeout),
            ("stop_flush_timeout", self.stop_flush_timeout),
        ):
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value!r}")
        for name, batch in (
            ("claim_batch", self.claim_batch),
            ("poll_batch", self.poll_batch),
            ("reap_batch", self.reap_batch),
            ("flush_batch", self.flush_batch),
        ):
            if not 1 <= batch <= 10_000:
                raise ValueError(f"{name} must be between 1 and 10000, got {batch!r}")

    def heartbeat_every(self, lease_seconds: float) -> float:
        """The heartbeat interval for a kernel whose leases last `lease_seconds`.

        Raises:
            ValueError: the configured interval is longer than half the lease.
        """
        interval = self.heartbeat_interval or lease_seconds / 3
        if interval > lease_seconds / 2:
            raise ValueError(
                f"heartbeat_interval ({interval:g}s) must be at most half the kernel's "
                f"lease_seconds ({lease_seconds:g}s)"
            )
        return interval
