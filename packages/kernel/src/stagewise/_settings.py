"""Kernel settings: one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KernelSettings:
    lease_seconds: float = 30.0
    """How long an attempt holds its stage without a heartbeat before it is presumed dead."""
    inline_output_bytes: int = 64 * 1024
    """Outputs up to this size (JSON bytes) live in the stage row; larger ones in the blob
    store under the run's keys."""
    max_payload_bytes: int = 1024 * 1024
    """Largest run input and config, together (JSON bytes), `run.create` accepts."""
    max_output_bytes: int = 16 * 1024 * 1024
    """Largest stage output (JSON bytes): a stage that returns more fails, and says so."""
    sync_workers: int = 8
    """Threads for plain `def` stages (a bounded pool; the event loop never blocks)."""
    outbox_max_attempts: int = 8
    """Deliveries of one event to one consumer before it is dead-lettered."""
    outbox_initial_backoff: float = 1.0
    outbox_max_backoff: float = 300.0
    requeue_after: float = 300.0
    """For a transport outside the database: a due stage whose job was handed over longer
    ago than this without starting is enqueued again (the first delivery may be lost)."""
    idempotency_ttl: float = 7 * 24 * 3600.0
    """How long a completed idempotency record replays its result."""
    worker_retention: float = 24 * 3600.0
    """How long a worker's row is kept after it was last seen (`stagewise workers list`)."""
    retention: float | None = None
    """Seconds a finished run is kept after it finished; then `lease.reapStale` (every
    host's maintenance) purges it, `purge_batch` runs per pass, as `run.purge` does. None
    (the default): runs are kept until purged by hand (`stagewise runs purge`)."""
    purge_batch: int = 500
    """Most runs one purge transaction deletes (its locks are held that long)."""
    group_commit: int = 64
    """Most attempts one transaction starts or records together: `job.execute` calls that
    reach the database while another one's transaction is open wait for it and then share
    the next one (group commit). 1 turns grouping off."""

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0 or self.requeue_after <= 0:
            raise ValueError("lease_seconds and requeue_after must be positive")
        if self.retention is not None and self.retention <= 0:
            raise ValueError(f"retention must be positive (or None), got {self.retention!r}")
        if self.purge_batch < 1 or self.purge_batch > 10_000:
            raise ValueError(f"purge_batch must be from 1 to 10000, got {self.purge_batch!r}")
        if self.sync_workers < 1 or self.outbox_max_attempts < 1 or self.group_commit < 1:
            raise ValueError(
                "sync_workers, outbox_max_attempts and group_commit must be at least 1"
            )
        for name in ("inline_output_bytes", "max_payload_bytes", "max_output_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
