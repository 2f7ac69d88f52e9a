"""The host's presence in the fleet: a `worker.beat` every `beat_interval` seconds.

The beat writes this worker's row (what it is, the workflow versions it has, since when it
has beaten without a gap) on the database's clock. It is how other workers tell that this
one died, and take its attempts over at once instead of after their leases (see the
kernel's `_workers`), and how `stagewise workers list` knows the fleet. When the beat says
another worker is gone, the reaper runs now, as an observer. A beat that fails is logged
and tried again at the next interval: missing a few is harmless, since the others count
this worker's silence only while they themselves can reach the database.

About once a minute the beat also surveys the unfinished runs: those of a workflow version
no live worker has registered are said once in the log (a deploy that dropped a version
its runs still need; see docs/deploys.md), and once more when a worker that has it is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from stagewise import Clock, Kernel, StrandedRuns, WorkerBeat, WorkerStop, __version__
from stagewise_node._scheduler import wait_event
from stagewise_node._stats import Counters

logger = logging.getLogger("stagewise.node")

SURVEY_EVERY = 60.0
"""Seconds between surveys of the runs no live worker can run (about)."""


class Presence:
    def __init__(
        self,
        kernel: Kernel,
        clock: Clock,
        worker_id: str,
        *,
        interval: float,
        slots: int,
        on_gone: Callable[[], None],
    ) -> None:
        self._kernel = kernel
        self._clock = clock
        self._worker_id = worker_id
        self.interval = interval
        self._slots = slots
        self._on_gone = on_gone
        self._gone: set[str] = set()
        self._stranded: set[tuple[str, str | None]] = set()
        self._beats = 0
        self._survey_every = max(1, round(SURVEY_EVERY / interval))

    def _command(self) -> WorkerBeat:
        survey = self._beats % self._survey_every == 0
        self._beats += 1
        return WorkerBeat(
            survey=survey,
            worker_id=self._worker_id,
            host=socket.gethostname()[:200],
            pid=os.getpid(),
            slots=self._slots,
            beat_interval=self.interval,
            software=__version__,
        )

    async def loop(self, stop: asyncio.Event, counters: Counters) -> None:
        """Beat now, then every interval until `stop` is set."""
        while True:
            await self.beat(counters)
            if await wait_event(stop, self._clock, self.interval):
                return

    async def beat(self, counters: Counters) -> None:
        try:
            command = self._command()
            result = await self._kernel.dispatch(command)
        except Exception as exc:
            counters.error("worker.beat", exc)
            logger.warning(
                "worker beat failed: %s: %s",
                type(exc).__name__,
                exc,
                extra={"worker_id": self._worker_id},
            )
            return
        new = set(result.gone) - self._gone
        self._gone = set(result.gone)
        if new:
            logger.warning(
                "worker(s) %s stopped beating: taking their attempts over",
                ", ".join(sorted(new)),
                extra={"worker_id": self._worker_id},
            )
        if result.gone:
            self._on_gone()
        if command.survey:
            self._say_stranded(result.stranded)

    def _say_stranded(self, stranded: list[StrandedRuns]) -> None:
        now = {(s.workflow_id, s.workflow_version) for s in stranded}
        for s in stranded:
            if (s.workflow_id, s.workflow_version) in self._stranded:
                continue
            version = s.workflow_version or "(recorded before versions)"
            logger.warning(
                "%d unfinished run(s) of workflow %r version %s wait: no live worker has "
                "that version registered (register it again until they finish; "
                "docs/deploys.md)",
                s.runs,
                s.workflow_id,
                version,
                extra={"worker_id": self._worker_id},
            )
        for workflow_id, back in sorted(self._stranded - now, key=str):
            logger.info(
                "runs of workflow %r version %s have a live worker again",
                workflow_id,
                back or "(recorded before versions)",
                extra={"worker_id": self._worker_id},
            )
        self._stranded = now

    async def stop(self) -> None:
        """This worker stopped cleanly (its attempts were given back)."""
        try:
            await self._kernel.dispatch(WorkerStop(worker_id=self._worker_id))
        except Exception as exc:
            logger.warning(
                "could not record this worker's stop (it will be presumed gone): %s: %s",
                type(exc).__name__,
                exc,
                extra={"worker_id": self._worker_id},
            )
