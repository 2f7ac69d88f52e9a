"""Waiting for a run to end (`Kernel.wait_for_run`), or for a value it publishes
(`Kernel.get_event`).

Theory of operation
-------------------
Every transaction of this process that ends a run (a stage's finish, a cancel, the reaper,
a claim failing an unknown workflow...) holds that run, and `Runtime.after_commit` hands
the committed runs to `RunWaiters.resolve`: a waiter for a run that is now terminal gets the
run at once, with no polling latency. A run that another process ends is never in our
transactions, so a waiter also reads the run every `poll_interval` seconds.

The waiter registers *before* its first read: a commit between the read and the wait then
resolves the future it is about to wait on, instead of being missed until the next poll.
A run with an attempt running in this process (or handed to it) skips that first read: its
end comes from a commit of ours, and reading would only compete with the attempt.
Waits go through the injected `Clock` (a `FakeClock` drives polls and timeouts in tests),
and a waiter that ends in any way (resolved, timed out, cancelled, run not found) removes
its future. A value a run publishes (`ctx.set_event`) is waited for the same way: the
commit that writes it resolves waiters in this process, a poll finds one written by
another.

Another process's commits are heard of through the `ChangeFeed` port (PostgreSQL's
NOTIFY, SQLite's watch of the file): a waiter watches its run before its first read, and a
hint makes it read again at once instead of at its next poll. The hint is cleared before
each read, so one that arrives during a read is not lost; the poll stays, for a hint that
never comes (a lost LISTEN connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from stagewise._errors import RunNotFoundError
from stagewise._ports import ChangeFeed, Clock, NoChangeFeed, Persistence
from stagewise._records import RunRecord, RunValueRecord

K = TypeVar("K")
V = TypeVar("V")


class Waiters(Generic[K, V]):
    """Futures waiting for something a commit of this process may bring, by key."""

    def __init__(self) -> None:
        self.waiting: dict[K, set[asyncio.Future[V]]] = {}

    def add(self, key: K) -> asyncio.Future[V]:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(key, set()).add(future)
        return future

    def remove(self, key: K, future: asyncio.Future[V]) -> None:
        future.cancel()  # does nothing once resolved
        futures = self.waiting.get(key)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self.waiting[key]

    def _set(self, key: K, value: V) -> None:
        for future in self.waiting.pop(key, ()):
            if not future.done():
                future.set_result(value)

    def _end_runs(self: Waiters[tuple[str, str], V], runs: Iterable[RunRecord], value: V) -> None:
        """Resolve with `value` every (run id, key) waiter of the runs that ended."""
        ended = {run.run_id for run in runs if run.status.is_terminal}
        for key in [k for k in self.waiting if k[0] in ended]:
            self._set(key, value)


class RunWaiters(Waiters[str, RunRecord]):
    """`wait_for_run` callers, by run id."""

    def resolve(self, runs: Iterable[RunRecord]) -> None:
        """After a commit: the runs its transaction held, as committed."""
        if self.waiting:
            for run in runs:
                if run.status.is_terminal:
                    self._set(run.run_id, run)


Settled = tuple[RunValueRecord | None]
"""What a `get_event` wait ends with: the value, or None when the run ended without it."""


class ValueWaiters(Waiters[tuple[str, str], Settled]):
    """`get_event` callers, by (run id, key)."""

    def resolve(self, values: Iterable[RunValueRecord], runs: Iterable[RunRecord]) -> None:
        """After a commit: the values its transaction published, then the runs it ended
        (whose other keys will never come)."""
        if not self.waiting:
            return
        for value in values:
            self._set((value.run_id, value.key), (value,))
        self._end_runs(runs, (None,))


@asynccontextmanager
async def watching(feed: ChangeFeed, run_id: str) -> AsyncIterator[asyncio.Event]:
    """An event set whenever the feed hints at a commit of `run_id` by another process,
    while the block runs (the watch is in place when the block begins)."""
    hinted = asyncio.Event()
    unwatch = await feed.watch(run_id, hinted.set)
    try:
        yield hinted
    finally:
        unwatch()


async def read_run(persistence: Persistence, run_id: str) -> RunRecord | None:
    async with persistence.transaction() as tx:
        return await tx.runs.get(run_id)


async def wait_for_run(
    waiters: RunWaiters,
    persistence: Persistence,
    clock: Clock,
    feed: ChangeFeed,
    run_id: str,
    *,
    timeout: float | None,  # noqa: ASYNC109 (the kernel's clock, not the loop's)
    poll_interval: float,
    running_here: bool,
) -> RunRecord:
    """The run once it is terminal (see the module's comment). `running_here`: an attempt
    of the run runs in this process, or was handed to it.

    Raises:
        RunNotFoundError: there is no such run.
        TimeoutError: it had not ended after `timeout` seconds.
    """
    status = "running here"

    async def ended() -> RunRecord | None:
        nonlocal status
        run = await read_run(persistence, run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        status = run.status.value
        return run if run.status.is_terminal else None

    deadline = _deadline(clock, timeout)
    found = waiters.add(run_id)
    try:
        # A run with an attempt running here (or about to) ends with a commit of ours: no
        # read now, nor at every hint of its commits (the SQLite feed hints at ours too),
        # which would only compete with that attempt; another process's end of it is found
        # by the next poll, as before the feed.
        async with watching(NoChangeFeed() if running_here else feed, run_id) as hinted:
            poll = Poll(clock, deadline, poll_interval, hinted)
            run = await poll.until(found, ended, read_first=not running_here)
    finally:
        waiters.remove(run_id, found)
    if run is None:
        raise TimeoutError(f"run {run_id!r} is still {status} after {timeout}s")
    return run


async def wait_for_value(
    waiters: ValueWaiters,
    persistence: Persistence,
    clock: Clock,
    feed: ChangeFeed,
    run_id: str,
    key: str,
    *,
    timeout: float | None,  # noqa: ASYNC109 (the kernel's clock, not the loop's)
    poll_interval: float,
) -> RunValueRecord | None:
    """The run's value under `key` once it is published; None after `timeout` seconds, or
    as soon as the run has ended without publishing it (it never will).

    Raises:
        RunNotFoundError: there is no such run.
    """

    async def settled() -> Settled | None:
        # The run before the value: a value is written no later than the commit that ends
        # its run, so when the run had ended at the first read the second sees the value
        # if there is one. (The other way round, on a database whose statements each see
        # the latest commit, a value and the run's end committed between the two reads
        # would read as "ended without it".)
        async with persistence.transaction() as tx:
            run = await tx.runs.get(run_id)
            if run is None:
                raise RunNotFoundError(run_id)
            value = await tx.values.get(run_id, key)
        if value is not None or run.status.is_terminal:
            return (value,)
        return None  # not yet

    deadline = _deadline(clock, timeout)
    if timeout == 0:  # a look, not a wait
        now = await settled()
        return None if now is None else now[0]
    found = waiters.add((run_id, key))
    try:
        async with watching(feed, run_id) as hinted:
            poll = Poll(clock, deadline, poll_interval, hinted)
            later = await poll.until(found, settled, read_first=True)
        return None if later is None else later[0]
    finally:
        waiters.remove((run_id, key), found)


class Poll:
    """How a waiter waits between its reads: until a commit of this process resolves its
    future, a hint from the change feed comes, `poll_interval` seconds pass, or the
    deadline (None: never)."""

    def __init__(
        self,
        clock: Clock,
        deadline: datetime | None,
        poll_interval: float,
        hinted: asyncio.Event,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.clock = clock
        self.deadline = deadline
        self.poll_interval = poll_interval
        self.hinted = hinted

    async def until(
        self,
        found: asyncio.Future[V],
        read: Callable[[], Awaitable[V | None]],
        *,
        read_first: bool,
    ) -> V | None:
        """What `read` returns once it is not None, or what resolves `found` first;
        None once the deadline passes (after one last read at it)."""
        read_now = read_first
        while True:
            if read_now:
                self.hinted.clear()  # before the read: a hint during it is not lost
                value = await read()
                if value is not None:
                    return value
            read_now = True
            if not await self.pause(found):
                return None
            if found.done():
                return found.result()

    async def pause(self, found: asyncio.Future[Any]) -> bool:
        """Wait for the next reason to read; False when the deadline has passed."""
        delay = self.poll_interval
        if self.deadline is not None:
            left = (self.deadline - self.clock.now()).total_seconds()
            if left <= 0:
                return False
            delay = min(delay, left)  # one last read at the deadline
        sleeper = asyncio.ensure_future(self.clock.sleep(delay))
        hint = asyncio.ensure_future(self.hinted.wait())
        either: set[asyncio.Future[Any]] = {found, sleeper, hint}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in (sleeper, hint):
                waiting.cancel()
            await asyncio.gather(sleeper, hint, return_exceptions=True)
        return True


def _deadline(clock: Clock, timeout: float | None) -> datetime | None:
    """When a wait of `timeout` seconds begun now gives up: taken before the first read,
    so that time passing during that read counts."""
    return None if timeout is None else clock.now() + timedelta(seconds=max(0.0, timeout))
