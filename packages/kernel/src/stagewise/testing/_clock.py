"""A clock that only moves when told to."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    """A `Clock` for tests: `now()` stands still until `advance()` moves it.

    `await clock.sleep(s)` returns once the clock has been advanced past its deadline, so
    timeouts, retries, leases and polls that take hours in production take no real time.
    """

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._now = start
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def now(self) -> datetime:
        return self._now

    def sleep(self, seconds: float) -> Awaitable[None]:
        """Wait until the clock passes `seconds` after now — the time of this call, so a
        clock advanced before the awaitable first runs cannot stretch the wait."""
        if seconds <= 0:
            return asyncio.sleep(0)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(
            self._sleepers, (self._now + timedelta(seconds=seconds), next(self._counter), future)
        )
        return future

    def advance(self, delta: float | timedelta) -> datetime:
        """Move time forward and wake every sleeper whose deadline has come."""
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += timedelta(seconds=seconds)
        self._wake()
        return self._now

    def advance_to(self, when: datetime) -> datetime:
        if when > self._now:
            self._now = when
        self._wake()
        return self._now

    def next_wakeup(self) -> datetime | None:
        """The earliest deadline of a task sleeping on this clock."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)  # cancelled sleepers
        return self._sleepers[0][0] if self._sleepers else None

    def _wake(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
