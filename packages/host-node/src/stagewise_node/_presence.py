"""The host's presence in the fleet: a `worker.beat` every `beat_interval` seconds.

The beat writes this worker's row (what it is, the workflow versions it has, since when it
has beaten without a gap) on the database's clock. It is how other workers tell that this
one died, and take its attempts over at once instead of after their leases (see the
kernel's `_workers`), and how `stagewise workers list` knows the fleet. When the beat says
another worker is gone, the reaper runs now, as an observer. A beat that fails is logged
and tried again at the next interval: missing a few is harmless, since the others count
this worker's silence only while they themselves can reach the database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from stagewise import Clock, Kernel, WorkerBeat, WorkerStop, __version__
from stagewise_node._scheduler import wait_event
from stagewise_node._stats import Counters

logger = logging.getLogger("stagewise.node")


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

    def _command(self) -> WorkerBeat:
        return WorkerBeat(
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
            result = await self._kernel.dispatch(self._command())
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
