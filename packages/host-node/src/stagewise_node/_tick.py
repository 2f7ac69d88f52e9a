"""The orchestration tick: claim pending runs, poll suspended stages, reap stale leases,
flush the outbox.

Each step is a kernel command with its own due time: its fallback interval, moved earlier
by the kernel's hints ("a suspended stage is due at T"). A tick runs the steps that are due,
one after another, each isolated: a step that raises or hangs past `step_timeout` is logged
and counted, and the others still run. A step that filled its batch is due again at once
(there is probably more). One lock makes sure two ticks never overlap, whether they come
from the loop or from `NodeHost.tick()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from stagewise import (
    Clock,
    CommandResult,
    JobMessage,
    Kernel,
    LeaseReapResult,
    LeaseReapStale,
    OutboxFlush,
    OutboxFlushResult,
    RunClaimPending,
    RunClaimPendingResult,
    StagePollResult,
    StagePollSuspended,
    WakeCommand,
)
from stagewise_node._jobs import backoff
from stagewise_node._scheduler import Alarm, wait_event
from stagewise_node._settings import NodeHostSettings
from stagewise_node._stats import Counters

logger = logging.getLogger("stagewise.node")

STEPS: tuple[WakeCommand, ...] = (
    "run.claimPending",
    "stage.pollSuspended",
    "lease.reapStale",
    "outbox.flush",
)


@dataclass
class _Step:
    name: WakeCommand
    interval: float
    batch: int
    alarm: Alarm
    fallback_at: datetime
    """When the step runs anyway, hint or not."""
    gap: timedelta
    """How long after a run a hint may run the step again."""
    last_run: datetime
    failures: int = 0
    """Failed runs in a row: the fallback interval backs off while the database is down."""

    def is_due(self, now: datetime) -> bool:
        if now >= self.fallback_at:
            return True
        return self.alarm.due and now >= self.last_run + self.gap

    def next_time(self) -> datetime:
        hinted = self.last_run + self.gap if self.alarm.due else self.alarm.next_time()
        if hinted is None:
            return self.fallback_at
        return min(max(hinted, self.last_run + self.gap), self.fallback_at)


class Slots(Protocol):
    """Where claimed runs' first stages go when the claim starts them for this host."""

    def free(self) -> int:
        """Job slots free now."""
        ...

    def adopt(self, jobs: Sequence[JobMessage]) -> None:
        """Execute jobs whose stages were started for this worker."""
        ...


class Ticker:
    """Runs the orchestration steps of one host."""

    def __init__(
        self,
        kernel: Kernel,
        clock: Clock,
        settings: NodeHostSettings,
        worker_id: str,
        slots: Slots | None = None,
    ) -> None:
        self._kernel = kernel
        self._slots = slots
        self._clock = clock
        self._settings = settings
        self._worker_id = worker_id
        self._lock = asyncio.Lock()
        self._poke = asyncio.Event()
        now = clock.now()
        s = settings
        # Reap hints come with every start and heartbeat of this host's own attempts, whose
        # leases it keeps alive; folding them together keeps a healthy host from reaping
        # (and finding nothing) once per heartbeat.
        table: tuple[tuple[WakeCommand, float, int, float, float], ...] = (
            ("run.claimPending", s.claim_interval, s.claim_batch, 0.0, 0.0),
            ("stage.pollSuspended", s.suspended_poll_interval, s.poll_batch, 0.0, 0.0),
            ("lease.reapStale", s.reap_interval, s.reap_batch, s.reap_interval / 2, 0.0),
            ("outbox.flush", s.flush_interval, s.flush_batch, 0.0, s.flush_batch_window),
        )
        self._steps: dict[WakeCommand, _Step] = {
            name: _Step(
                name=name,
                interval=interval,
                batch=batch,
                alarm=Alarm(clock, merge=merge, poke=self._poke),
                fallback_at=now,
                gap=timedelta(seconds=gap),
                last_run=now - timedelta(seconds=gap),
            )
            for name, interval, batch, merge, gap in table
        }

    def hint(self, command: WakeCommand, at: datetime) -> None:
        step = self._steps.get(command)
        if step is not None:
            step.alarm.ring(at)

    def poke(self) -> None:
        """Make the loop look again (at stop, or when the steps' timing changed)."""
        self._poke.set()

    def ring(self, command: WakeCommand) -> None:
        """Make a step due now."""
        self._steps[command].alarm.ring()

    async def loop(self, stopping: asyncio.Event, counters: Counters) -> None:
        """Tick whenever a step is due, until `stopping` is set."""
        while not stopping.is_set():
            self._poke.clear()
            now = self._clock.now()
            due = [name for name, step in self._steps.items() if step.is_due(now)]
            if due:
                await self.tick(counters, due)
                continue
            until = min(step.next_time() for step in self._steps.values())
            await wait_event(self._poke, self._clock, (until - now).total_seconds())

    async def tick(
        self, counters: Counters, steps: Sequence[WakeCommand] = STEPS
    ) -> dict[WakeCommand, CommandResult | Exception]:
        """Run `steps` once, each isolated; returns each step's result or error."""
        results: dict[WakeCommand, CommandResult | Exception] = {}
        async with self._lock:
            for name in steps:
                step = self._steps[name]
                step.alarm.take()
                step.last_run = self._clock.now()
                step.fallback_at = step.last_run + timedelta(seconds=step.interval)
                try:
                    result = await asyncio.wait_for(
                        self._command(name, step.batch)(), self._settings.step_timeout
                    )
                except Exception as exc:
                    if isinstance(exc, TimeoutError):
                        exc = TimeoutError(
                            f"{name} took longer than {self._settings.step_timeout}s"
                        )
                    counters.tick_errors += 1
                    counters.error(name, exc)
                    step.failures += 1
                    delay = backoff(step.interval, step.failures)
                    step.fallback_at = step.last_run + timedelta(seconds=delay)
                    logger.error(
                        "tick step %s failed (%d in a row), next try in %.1fs: %s: %s",
                        name,
                        step.failures,
                        delay,
                        type(exc).__name__,
                        exc,
                        exc_info=step.failures == 1 and not isinstance(exc, TimeoutError),
                        extra={"step": name, "worker_id": self._worker_id},
                    )
                    results[name] = exc
                    continue
                if step.failures:
                    logger.info(
                        "tick step %s works again after %d failure(s)",
                        name,
                        step.failures,
                        extra={"step": name, "worker_id": self._worker_id},
                    )
                    step.failures = 0
                results[name] = result
                if _full(result, step.batch):
                    step.alarm.ring()  # the batch was full: there is probably more
                    step.last_run -= step.gap
                _log_result(name, result, self._worker_id)
            counters.ticks += 1
        return results

    async def flush_all(self, counters: Counters, timeout: float) -> None:  # noqa: ASYNC109
        """Deliver every pending event now, batch after batch, for up to `timeout` seconds
        (at stop: the last events of this host's runs go out before it returns). A failed
        or slow flush is logged and ends it; the next flusher delivers the rest."""
        step = self._steps["outbox.flush"]

        async def flush() -> None:
            while True:
                result = await self._command("outbox.flush", step.batch)()
                if not _full(result, step.batch):
                    return

        try:
            async with self._lock:  # never beside a tick's own flush
                await asyncio.wait_for(flush(), timeout)
        except Exception as exc:
            counters.error("outbox.flush", exc)
            logger.warning(
                "could not deliver every event before stopping: %s: %s",
                type(exc).__name__,
                exc,
                extra={"step": "outbox.flush", "worker_id": self._worker_id},
            )

    def _command(self, name: WakeCommand, batch: int) -> Callable[[], Awaitable[CommandResult]]:
        kernel, worker = self._kernel, self._worker_id
        if name == "run.claimPending":
            return lambda: self._claim(batch)
        if name == "stage.pollSuspended":
            return lambda: kernel.dispatch(StagePollSuspended(limit=batch, poller_id=worker))
        if name == "lease.reapStale":
            # As an observer: the attempts of a worker presumed gone are taken over at once.
            return lambda: kernel.dispatch(LeaseReapStale(limit=batch, observer=worker))
        return lambda: kernel.dispatch(OutboxFlush(limit=batch, flusher_id=worker))

    async def _claim(self, batch: int) -> RunClaimPendingResult:
        """Claim runs; start as many of their first stages here as there are free slots
        (eager dispatch: no dequeue, no start transaction for them)."""
        take = self._slots.free() if self._slots is not None else 0
        command = RunClaimPending(limit=batch, worker_id=self._worker_id, take=take)
        result = await self._kernel.dispatch(command)
        if result.started_jobs and self._slots is not None:
            self._slots.adopt(result.started_jobs)
        return result


def _full(result: CommandResult, batch: int) -> bool:
    if isinstance(result, RunClaimPendingResult):
        return len(result.run_ids) >= batch
    if isinstance(result, StagePollResult):
        return result.checked >= batch
    if isinstance(result, LeaseReapResult):
        return result.retried + result.failed >= batch
    if isinstance(result, OutboxFlushResult):
        return result.delivered + result.failed + result.dead_lettered >= batch
    return False


def _log_result(name: WakeCommand, result: CommandResult, worker_id: str) -> None:
    extra = {"step": name, "worker_id": worker_id}
    if isinstance(result, RunClaimPendingResult) and result.run_ids:
        logger.info("claimed %d run(s)", len(result.run_ids), extra=extra)
    elif isinstance(result, LeaseReapResult) and (result.retried or result.failed):
        logger.warning(
            "reaped expired leases: %d attempt(s) retried, %d failed",
            result.retried,
            result.failed,
            extra=extra,
        )
    elif isinstance(result, StagePollResult) and result.checked:
        logger.info(
            "polled %d suspended stage(s): %d resumed, %d rescheduled, %d failed",
            result.checked,
            result.resumed,
            result.rescheduled,
            result.failed,
            extra=extra,
        )
    elif isinstance(result, OutboxFlushResult) and (result.failed or result.dead_lettered):
        logger.warning(
            "outbox: %d delivered, %d failed, %d dead-lettered",
            result.delivered,
            result.failed,
            result.dead_lettered,
            extra=extra,
        )
