"""While the database is down a worker backs off, and it says when the database is back.

A node host on the in-memory adapters and a FakeClock, whose job transport and persistence
fail (as a database that went away does) until the test brings them back. The host's job
loop and its tick steps must retry at growing intervals (not hammer the server once per
poll interval for the whole outage), log the failure once with its traceback and then
briefly, and log that the database is reachable again when it is.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from stagewise import TransientError
from stagewise._ports import Transaction
from tests.integration.node.flows import three
from tests.integration.node.support import FAST, World, eventually, stop_all


class Outage:
    """A switch for the database, and the times (on the fake clock) it was called."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.down = True
        self.dequeues: list[datetime] = []
        self.claims: list[datetime] = []

    def check(self) -> None:
        if self.down:
            raise TransientError("lost the connection to the database: it is restarting")


class DownQueue:
    def __init__(self, outage: Outage) -> None:
        self._outage = outage
        self._queue = outage.world.queue

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)

    def joins(self, tx: Transaction) -> bool:
        return self._queue.joins(tx)

    async def dequeue(self, **kwargs: Any) -> Any:
        self._outage.dequeues.append(self._outage.world.clock.now())
        self._outage.check()
        return await self._queue.dequeue(**kwargs)


class DownPersistence:
    def __init__(self, outage: Outage) -> None:
        self._outage = outage
        self._inner = outage.world.persistence

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        self._outage.check()
        async with self._inner.transaction() as tx:
            yield tx


def _gaps(times: list[datetime]) -> list[float]:
    return [(b - a).total_seconds() for a, b in itertools.pairwise(times)]


async def test_a_worker_backs_off_while_the_database_is_down_and_logs_when_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World.of([three])
    outage = Outage(world)
    world.persistence = DownPersistence(outage)  # type: ignore[assignment]
    settings = replace(FAST, job_poll_interval=1, claim_interval=1)
    host = world.host(
        settings=replace(settings, reap_own_leases_on_start=False), transport=DownQueue(outage)
    )
    caplog.set_level(logging.INFO, logger="stagewise.node")
    await host.start()
    try:
        for _ in range(60):  # a minute of outage, a second at a time
            world.clock.advance(1)
            await asyncio.sleep(0.002)
        gaps = _gaps(outage.dequeues)
        assert len(outage.dequeues) <= 10, f"a try every {gaps}: no backoff"
        failures = [r for r in caplog.records if "dequeue failed" in r.getMessage()]
        waits = [float(r.args[1]) for r in failures]  # type: ignore[index]
        assert waits[:5] == [1, 2, 4, 8, 16], waits
        assert max(waits) == 30, "the backoff is capped"
        assert failures[0].exc_info, "the first failure says everything"
        assert not any(r.exc_info for r in failures[1:]), "the others are one line"
        assert "retrying in" in failures[-1].getMessage()
        claims = [
            r for r in caplog.records if "tick step run.claimPending failed" in r.getMessage()
        ]
        assert 3 <= len(claims) <= 10, "the tick steps back off too"

        outage.down = False
        world.clock.advance(30)
        await eventually(lambda: "dequeue works again" in caplog.text)
        await eventually(lambda: "tick step run.claimPending works again" in caplog.text)
    finally:
        outage.down = False
        await stop_all(host)
