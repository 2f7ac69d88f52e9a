"""The node host: a long-running worker around one kernel.

Theory of operation
-------------------
A host is four small loops on one event loop, all stoppable through one `asyncio.Event`:

* the **job loop** dequeues up to the free slots' worth of jobs and runs each one as a task
  (`job.execute`); with every slot busy it waits for one to free, with nothing to do it
  sleeps on its alarm, which goes off when the kernel hints that a job is due (enqueued now
  or a retry's backoff ends), when a NOTIFY says another process enqueued, or after the
  fallback poll interval (see `_jobs`);
* the **tick loop** runs the orchestration steps (claim, poll suspended, reap, flush) when
  each is due (see `_tick`);
* the **heartbeat loop** extends the lease of every attempt in flight and learns of
  cancellation (see `_heartbeat`);
* the **listen loop**, when the transport can tell (PostgreSQL LISTEN/NOTIFY), rings the job
  loop's alarm as soon as any process enqueues.

Stopping is a drain: the job and tick loops stop (no new claims, no new jobs), in-flight
attempts may finish until the deadline and keep heartbeating meanwhile, the ones still
running are cancelled, and `lease.reapStale` for this worker's own id hands their stages to
the next attempt and gives back every delivery this worker holds, so another worker takes
them at once instead of after the lease. Last, the outbox is flushed, so the events of what
this host did reach the sink before `stop()` returns.

The host holds no state that matters for correctness: the stage rows are the truth and the
kernel fences every delivery, so a host killed at any point loses nothing but time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

from stagewise import (
    Clock,
    CommandResult,
    JobMessage,
    JobTransport,
    Kernel,
    RunCreate,
    RunCreateResult,
    WakeCommand,
)
from stagewise_node._heartbeat import Heartbeater
from stagewise_node._jobs import JobRunner, JobWakeups, RunWakeups
from stagewise_node._presence import Presence
from stagewise_node._scheduler import HostScheduler, listen
from stagewise_node._settings import NodeHostSettings
from stagewise_node._signals import serve_until_signalled
from stagewise_node._stats import Counters, HostState, HostStats
from stagewise_node._tick import STEPS, Ticker

logger = logging.getLogger("stagewise.node")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class NodeHost:
    """Runs a kernel's jobs and maintenance in a long-running process.

    Example:
        scheduler = HostScheduler()
        kernel = create_kernel(..., scheduler=scheduler)
        host = NodeHost(kernel=kernel, job_transport=transport, worker_id="w1",
                        scheduler=scheduler)
        await host.run()  # serves until SIGTERM/SIGINT, then drains

    The host is also the kernel's `Scheduler` (`wake`); because the kernel is built before
    the host, pass the same `HostScheduler` to both and the host attaches itself to it.
    Without it, work is found by the fallback polling intervals only.

    `clock` times the host's loops; by default the kernel's, since the kernel's wake-up
    hints are on it (give the system clock to run the loops in real time over a kernel on a
    `FakeClock`).
    """

    def __init__(
        self,
        *,
        kernel: Kernel,
        job_transport: JobTransport,
        worker_id: str | None = None,
        settings: NodeHostSettings | None = None,
        scheduler: HostScheduler | None = None,
        clock: Clock | None = None,
    ) -> None:
        """
        Raises:
            ValueError: the heartbeat interval is not shorter than the kernel's lease.
        """
        self.kernel = kernel
        self.settings = settings or NodeHostSettings()
        self.worker_id = worker_id or default_worker_id()
        self._transport = job_transport
        self._clock: Clock = clock or kernel.clock
        self._lease = kernel.settings.lease_seconds
        self._heartbeater = Heartbeater(
            kernel, self._clock, self.settings.heartbeat_every(self._lease), self.worker_id
        )
        self._counters = Counters()
        self._jobs = JobRunner(
            kernel, job_transport, self._clock, self.settings, self.worker_id, self._counters
        )
        self._ticker = Ticker(kernel, self._clock, self.settings, self.worker_id, self._jobs)
        self._presence = Presence(
            kernel,
            self._clock,
            self.worker_id,
            interval=self.settings.beat_interval,
            slots=self.settings.concurrency,
            on_gone=lambda: self._ticker.ring("lease.reapStale"),
        )
        self._running = self._jobs.running
        self._stopping = asyncio.Event()
        self._beats_stop = asyncio.Event()
        self._force = asyncio.Event()
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._stop_task: asyncio.Task[None] | None = None
        self._crash: BaseException | None = None
        self._crashed = asyncio.Event()
        self._state: HostState = "new"
        self._started: float | None = None
        self._stopped: float | None = None
        self._scheduler = scheduler
        if scheduler is not None:
            scheduler.attach(self._on_hint)

    # --- the Scheduler port ------------------------------------------------------------

    async def wake(self, command: WakeCommand, at: datetime) -> None:
        """A hint that `command` has work from `at` on: wake the loop that runs it then."""
        self._on_hint(command, at)

    def _on_hint(self, command: WakeCommand, at: datetime) -> None:
        if self._state not in ("new", "running"):
            return
        if command == "job.execute":
            self._jobs.alarm.ring(at)
        else:
            self._ticker.hint(command, at)

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def state(self) -> HostState:
        return self._state

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        """Reclaim this worker id's leases (a restart after a crash) and start the loops.

        Raises:
            RuntimeError: the host was started before.
            StagewiseError: reclaiming the leases failed (the database is unreachable...).
        """
        if self._state != "new":
            raise RuntimeError(f"host {self.worker_id!r} was already started ({self._state})")
        if self.settings.reap_own_leases_on_start:
            await self._release_own("on start")
        self._state = "running"
        self._started = time.monotonic()
        self._spawn_loop("presence", self._presence.loop(self._beats_stop, self._counters))
        self._spawn_loop("jobs", self._jobs.loop(self._stopping))
        self._spawn_loop("tick", self._ticker.loop(self._stopping, self._counters))
        self._spawn_loop(
            "heartbeat",
            self._heartbeater.loop(
                lambda: self._jobs.running_for(self._heartbeater.interval / 2),
                self._beats_stop,
                self._counters,
            ),
        )
        if isinstance(self._transport, JobWakeups):
            self._spawn_loop("listen", self._jobs.listen(self._transport, self._stopping))
        if isinstance(self._transport, RunWakeups):
            self._spawn_loop("listen-runs", self._listen_runs(self._transport))
        logger.info(
            "worker %s started: %d slot(s), lease %.1fs, heartbeat every %.1fs",
            self.worker_id,
            self.settings.concurrency,
            self._lease,
            self._heartbeater.interval,
            extra={"worker_id": self.worker_id},
        )

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop claiming and dequeuing, let in-flight stages finish for up to
        `drain_timeout` seconds (default: the settings'), then cancel the rest and release
        their leases so that another worker takes them at once; then deliver the outbox's
        pending events (up to `settings.stop_flush_timeout`). Safe to call twice."""
        if self._state == "new":
            self._state = "stopped"
            self._detach()
            return
        if self._stop_task is None:
            timeout = self.settings.drain_timeout if drain_timeout is None else drain_timeout
            self._stop_task = asyncio.ensure_future(self._drain(max(0.0, timeout)))
        await asyncio.shield(self._stop_task)

    def force_stop(self) -> None:
        """Stop waiting for in-flight stages: a drain in progress ends now."""
        self._force.set()

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then drain (`settings.drain_timeout`).

        A second signal ends the drain at once. Returns normally after a clean stop.

        Raises:
            StagewiseError: the host could not start.
            BaseException: a loop of the host crashed (a bug): it is stopped, then re-raised.
        """
        await serve_until_signalled(
            start=self.start,
            stop=self.stop,
            force_stop=self.force_stop,
            crashed=self._crashed,
            drain_timeout=self.settings.drain_timeout,
            worker_id=self.worker_id,
        )
        if self._crash is not None:
            raise self._crash

    # --- in-process runs -----------------------------------------------------------------

    async def submit(self, command: RunCreate) -> RunCreateResult:
        """Create a run and, while this host runs and has a free slot, start it here in the
        creating transaction (`RunCreate.worker_id` set to this host's id): its first stage
        runs in that slot at once, with no claim, queue or wake-up in between. Otherwise
        the run is created PENDING for a claim, as by `kernel.dispatch`. A worker id set by
        the caller is kept, and the stage started for it is the caller's to execute. Await
        the run's end with `host.kernel.wait_for_run(run_id)`.

        Raises:
            StagewiseError: whatever `run.create` refuses (unknown workflow, bad input...).
        """
        return await self._jobs.submit(command, serving=self._state == "running")

    async def tick(self) -> dict[WakeCommand, CommandResult | Exception]:
        """Run every orchestration step once now (never while another tick runs)."""
        return await self._ticker.tick(self._counters, STEPS)

    def stats(self) -> HostStats:
        started, stopped = self._started, self._stopped
        uptime = 0.0 if started is None else (stopped or time.monotonic()) - started
        return self._counters.snapshot(
            self.worker_id, self._state, in_flight=len(self._running), uptime=uptime
        )

    # --- loops ---------------------------------------------------------------------------

    def _spawn_loop(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=f"stagewise-{name}-{self.worker_id}")
        self._loops[name] = task
        task.add_done_callback(self._loop_done)

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        logger.critical(
            "host loop %s crashed; stopping the host",
            task.get_name(),
            exc_info=exc,
            extra={"worker_id": self.worker_id},
        )
        self._crash = self._crash or exc
        self._counters.error(task.get_name(), exc)
        self._crashed.set()

    async def _listen_runs(self, transport: RunWakeups) -> None:
        """Claim at once when the transport says another process created a run."""
        await listen(
            transport.wait_for_runs,
            lambda: self._ticker.ring("run.claimPending"),
            what="run",
            stopping=self._stopping,
            clock=self._clock,
            renew_every=self.settings.listen_timeout,
            worker_id=self.worker_id,
        )

    # --- stopping ------------------------------------------------------------------------

    async def _drain(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        self._state = "draining"
        logger.info(
            "worker %s stopping: %d stage(s) in flight, draining for up to %.1fs",
            self.worker_id,
            len(self._running),
            seconds,
            extra={"worker_id": self.worker_id},
        )
        self._stopping.set()
        self._jobs.wake()
        self._ticker.poke()
        for name in ("listen", "listen-runs"):
            listen = self._loops.pop(name, None)
            if listen is not None:
                listen.cancel()
                await asyncio.gather(listen, return_exceptions=True)
        for name in ("jobs", "tick"):  # a tick in progress may finish
            task = self._loops.pop(name, None)
            if task is not None:
                await self._until(deadline, {task})
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        await self._until(deadline, set(self._running))
        abandoned = list(self._running)
        await self._give_back([self._running[task] for task in abandoned])
        for task in abandoned:
            task.cancel()
        await asyncio.gather(*abandoned, return_exceptions=True)

        self._beats_stop.set()
        for name in ("heartbeat", "presence"):
            beats = self._loops.pop(name, None)
            if beats is not None:
                await asyncio.gather(beats, return_exceptions=True)
        try:
            await self._release_own("on stop")
        except Exception as exc:
            self._counters.error("release", exc)
            logger.error(
                "could not release this worker's leases (they expire in %.1fs): %s: %s",
                self._lease,
                type(exc).__name__,
                exc,
                extra={"worker_id": self.worker_id},
            )
        else:
            await self._presence.stop()  # its attempts are given back: nobody takes it over
        await self._ticker.flush_all(self._counters, self.settings.stop_flush_timeout)
        self._state = "stopped"
        self._stopped = time.monotonic()
        self._detach()
        stats = self.stats()
        logger.info(
            "worker %s stopped: %d job(s) processed, %d abandoned at the deadline",
            self.worker_id,
            stats.jobs_processed,
            len(abandoned),
            extra={"worker_id": self.worker_id},
        )

    async def _until(self, deadline: float, tasks: set[asyncio.Task[None]]) -> None:
        """Wait for `tasks` until the loop time `deadline` or a forced stop."""
        loop = asyncio.get_running_loop()
        force = asyncio.ensure_future(self._force.wait())
        try:
            while True:
                pending = {t for t in tasks if not t.done()}
                remaining = deadline - loop.time()
                if not pending or remaining <= 0 or self._force.is_set():
                    return
                await asyncio.wait(
                    {*pending, force}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            force.cancel()
            await asyncio.gather(force, return_exceptions=True)

    async def _give_back(self, jobs: list[JobMessage]) -> None:
        """Release the attempts still running at the drain deadline (`JobRunner.give_back`);
        one that cannot be released is freed by `_release_own`, spending the attempt."""
        for job in jobs:
            await self._jobs.give_back(job)

    async def _release_own(self, when: str) -> None:
        await self._jobs.release_own(when)

    def _detach(self) -> None:
        if self._scheduler is not None:
            self._scheduler.detach(self._on_hint)

    def __repr__(self) -> str:
        return f"NodeHost(worker_id={self.worker_id!r}, state={self._state!r})"
