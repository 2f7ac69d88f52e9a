"""The fleet's one clock: this machine's clock, corrected by its measured offset from the
database's.

Why
---
Leases, due times and worker beats are instants that one process writes and another
judges: a lease written by worker A as "now + 30 s" is found expired by whoever reads it
later with a `now` past it. When each process takes `now` from its own machine, a machine
whose clock runs ahead reaps the live leases of the others (and the work runs twice). So on
the SQL backends every process takes `now` from one clock, the database's.

How
---
Asking the database for every `now` would cost a round trip per unit of work. Instead the
clock measures the offset between the database's clock and this machine's at connect and
then every `refresh_every` seconds, and `now()` is this machine's time plus that offset: a
read of the local clock, as cheap as before. A measurement takes a few samples on one
connection and keeps the one with the shortest round trip, centred on it (the database's
reading is taken somewhere inside the round trip; its middle is the best guess, wrong by at
most half of it). Between two measurements the offset can only drift by what the machines'
clocks drift apart in `refresh_every` (microseconds); a step of the local clock (NTP
correcting it) is caught at the next refresh.

On SQLite "the database's clock" is the clock of the machine the file is on: the same
machine, so the offset is zero but for an injected local clock, as in the tests that skew
one host. A measurement that fails (the database is away) keeps the last offset.

A machine whose clock is off by more than `warn_over` seconds is said once in the log (with
the offset), and again when it is back within: its leases are right either way, but the
times its own logs print are not.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from stagewise import Clock
from stagewise_sql._engine import Database

logger = logging.getLogger("stagewise.sql")

SAMPLES = 3

_NOW = {
    "postgresql": text("SELECT clock_timestamp()"),
    "sqlite": text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"),
}


class DatabaseClock:
    """`now()` on the database's clock (see the module docstring); `sleep` is local."""

    def __init__(
        self,
        db: Database,
        local: Clock,
        *,
        refresh_every: float = 60.0,
        warn_over: float = 1.0,
    ) -> None:
        self._db = db
        self._local = local
        self._refresh_every = refresh_every
        self._warn_over = warn_over
        self._offset = timedelta(0)
        self._warned = False
        self._task: asyncio.Task[None] | None = None

    @property
    def offset(self) -> float:
        """Seconds to add to this machine's clock to read the database's (last measured)."""
        return self._offset.total_seconds()

    def now(self) -> datetime:
        return self._local.now() + self._offset

    def sleep(self, seconds: float) -> Any:
        return self._local.sleep(seconds)

    async def measure(self) -> float:
        """Measure the offset now and use it; returns it in seconds.

        Raises:
            PersistenceError: the database could not be asked (the offset is unchanged).
        """
        best: tuple[timedelta, timedelta] | None = None  # (round trip, offset)
        async with self._db.single(write=False) as link:
            for _ in range(SAMPLES):
                sent = self._local.now()
                theirs = _aware((await link.execute(_NOW[self._db.dialect])).scalar_one())
                back = self._local.now()
                sample = (back - sent, theirs - (sent + (back - sent) / 2))
                if best is None or sample[0] < best[0]:
                    best = sample
        assert best is not None
        self._offset = best[1]
        self._say()
        return self.offset

    def _say(self) -> None:
        off = abs(self.offset) > self._warn_over
        if off and not self._warned:
            logger.warning(
                "this machine's clock is %.3f s %s the database's: leases, due times and "
                "beats follow the database's clock, but synchronise this machine's (NTP)",
                abs(self.offset),
                "ahead of" if self.offset < 0 else "behind",
            )
        elif self._warned and not off:
            logger.info("this machine's clock agrees with the database's again")
        self._warned = off

    def start(self) -> None:
        """Measure again every `refresh_every` seconds, in the background, until `close`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._refresh(), name="stagewise-database-clock"
            )

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_every)  # real time: a fake clock never drifts
            try:
                await self.measure()
            except Exception as exc:  # the database is away: keep the last offset
                logger.debug("could not measure the database's clock: %s", exc)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task


def _aware(value: Any) -> datetime:
    """The database's reading as an aware UTC datetime (SQLite's is text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"the database's clock read as {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
