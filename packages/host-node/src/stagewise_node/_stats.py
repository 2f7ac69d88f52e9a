"""What a host has done so far: counters kept by the loops, a snapshot for `stats()`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HostState = Literal["new", "running", "draining", "stopped"]


@dataclass(frozen=True, slots=True)
class HostStats:
    """A snapshot of a host's counters (`NodeHost.stats()`)."""

    worker_id: str
    state: HostState
    jobs_processed: int
    """Deliveries handled to the end, whatever the outcome."""
    jobs_succeeded: int
    """Attempts that completed or suspended."""
    jobs_failed: int
    """Attempts that failed the stage for good, plus deliveries the host could not handle
    (an error from the kernel or the database)."""
    jobs_retried: int
    """Attempts that failed and were scheduled again."""
    jobs_cancelled: int
    jobs_lease_lost: int
    """Stale or duplicate deliveries the kernel refused (nothing ran or nothing was kept)."""
    ticks: int
    tick_errors: int
    heartbeats: int
    in_flight: int
    uptime: float
    """Seconds since `start()` (0 before it)."""
    last_error: str | None


@dataclass
class Counters:
    jobs_processed: int = 0
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    jobs_retried: int = 0
    jobs_cancelled: int = 0
    jobs_lease_lost: int = 0
    ticks: int = 0
    tick_errors: int = 0
    heartbeats: int = 0
    last_error: str | None = None

    def error(self, where: str, exc: BaseException) -> None:
        self.last_error = f"{where}: {type(exc).__name__}: {exc}"[:1000]

    def outcome(self, outcome: str) -> None:
        self.jobs_processed += 1
        if outcome in ("completed", "suspended"):
            self.jobs_succeeded += 1
        elif outcome == "retry":
            self.jobs_retried += 1
        elif outcome == "failed":
            self.jobs_failed += 1
        elif outcome == "cancelled":
            self.jobs_cancelled += 1
        elif outcome == "lease_lost":
            self.jobs_lease_lost += 1

    def snapshot(
        self, worker_id: str, state: HostState, *, in_flight: int, uptime: float
    ) -> HostStats:
        return HostStats(
            worker_id=worker_id,
            state=state,
            jobs_processed=self.jobs_processed,
            jobs_succeeded=self.jobs_succeeded,
            jobs_failed=self.jobs_failed,
            jobs_retried=self.jobs_retried,
            jobs_cancelled=self.jobs_cancelled,
            jobs_lease_lost=self.jobs_lease_lost,
            ticks=self.ticks,
            tick_errors=self.tick_errors,
            heartbeats=self.heartbeats,
            in_flight=in_flight,
            uptime=uptime,
            last_error=self.last_error,
        )
