"""Wake-ups: the kernel's Scheduler port, and the alarms the host's loops sleep on.

A loop of the host never sleeps a fixed interval when it could know better. It sleeps on
an `Alarm` until the earliest of: a ring "now" (a job was enqueued in this process, a
NOTIFY arrived, the host is stopping), a time someone asked for ("a retry is due at T"),
or its fallback polling interval. The kernel's hints come in through `HostScheduler`, which
exists only because the kernel needs its Scheduler before the host that owns the alarms is
built; it forwards every hint to the host it is attached to.

Every wait goes through the injected `Clock`, so a `FakeClock` drives the loops in tests.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from stagewise import Clock, WakeCommand

logger = logging.getLogger("stagewise.node")

MAX_PENDING_TIMES = 10_000
"""An alarm keeps at most this many future times; more are dropped (hints are only hints:
the fallback interval still finds the work)."""


async def wait_event(event: asyncio.Event, clock: Clock, seconds: float) -> bool:
    """Wait until `event` is set or `seconds` pass on `clock`; True if the event is set."""
    if event.is_set():
        return True
    if seconds <= 0:
        await asyncio.sleep(0)
        return event.is_set()
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
    return event.is_set()


async def listen(
    wait: Callable[[float], Awaitable[bool]],
    ring: Callable[[], None],
    *,
    what: str,
    stopping: asyncio.Event,
    clock: Clock,
    renew_every: float,
    worker_id: str,
) -> None:
    """Until `stopping`: wait for a notification (`wait(renew_every)` says whether one came)
    and `ring` when it did. A failed wait is logged and retried after a growing pause (up
    to 30 s), so a lost database does not spin the loop."""
    failures = 0
    while not stopping.is_set():
        try:
            woke = await wait(renew_every)
        except Exception as exc:
            failures += 1
            logger.warning(
                "waiting for %s notifications failed: %s: %s",
                what,
                type(exc).__name__,
                exc,
                extra={"worker_id": worker_id},
            )
            await wait_event(stopping, clock, min(30.0, failures))
            continue
        failures = 0
        if woke:
            ring()


class Alarm:
    """What one loop sleeps on: rung now, or at the earliest time it was asked for.

    `merge` folds times that close together into one wake-up: when the alarm goes off at
    `t`, every time up to `t + merge` goes with it.
    """

    def __init__(
        self, clock: Clock, *, merge: float = 0.0, poke: asyncio.Event | None = None
    ) -> None:
        self._clock = clock
        self._merge = timedelta(seconds=merge)
        self._times: list[datetime] = []
        self._due = False
        self._poke = poke if poke is not None else asyncio.Event()
        """Set whenever the sleeper must look again; several alarms may share one."""

    @property
    def due(self) -> bool:
        """Rung, or a time asked for has come."""
        return self._due or bool(self._times and self._times[0] <= self._clock.now())

    def next_time(self) -> datetime | None:
        return self._times[0] if self._times else None

    def ring(self, at: datetime | None = None) -> None:
        """Go off now (`at` None or not in the future), or at `at`."""
        if at is None or at <= self._clock.now():
            self._due = True
            self._poke.set()
            return
        if len(self._times) >= MAX_PENDING_TIMES:
            return
        earliest = self._times[0] if self._times else None
        heapq.heappush(self._times, at)
        if earliest is None or at < earliest:
            self._poke.set()  # the sleeper must wake earlier than it planned

    def take(self) -> bool:
        """Consume the alarm: True if it was due. Times merged with the one that came go
        with it; later ones stay."""
        now = self._clock.now()
        due = self._due
        self._due = False
        if self._times and self._times[0] <= now:
            due = True
            limit = now + self._merge
            while self._times and self._times[0] <= limit:
                heapq.heappop(self._times)
        return due

    async def wait(self, fallback: float) -> None:
        """Sleep until the alarm is due or `fallback` seconds pass."""
        limit = self._clock.now() + timedelta(seconds=fallback)
        while True:
            self._poke.clear()
            now = self._clock.now()
            if self.due or now >= limit:
                return
            until = min(limit, self._times[0]) if self._times else limit
            await wait_event(self._poke, self._clock, (until - now).total_seconds())


Hint = Callable[[WakeCommand, datetime], None]


class HostScheduler:
    """The kernel's `Scheduler` port for a node host.

    Build it first, give it to `create_kernel(scheduler=...)`, then to `NodeHost(scheduler=...)`,
    which attaches itself: from then on "command X has work at T" wakes the loop that runs X
    at T. Hints that come while no host is attached are dropped (the fallback intervals find
    the work).
    """

    def __init__(self) -> None:
        self._target: Hint | None = None

    def attach(self, target: Hint) -> None:
        """Send hints to `target` from now on.

        Raises:
            RuntimeError: another host is attached already.
        """
        if self._target is not None and self._target != target:
            raise RuntimeError("this HostScheduler is already attached to another host")
        self._target = target

    def detach(self, target: Hint) -> None:
        if self._target == target:
            self._target = None

    async def wake(self, command: WakeCommand, at: datetime) -> None:
        target = self._target
        if target is not None:
            target(command, at)
