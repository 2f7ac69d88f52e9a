"""Waiting for a run to end (`Kernel.wait_for_run`).

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
its future.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from datetime import timedelta
from typing import Any

from stagewise._errors import RunNotFoundError
from stagewise._ports import Clock, Persistence
from stagewise._records import RunRecord


class RunWaiters:
    """Futures waiting for runs to end, by run id."""

    def __init__(self) -> None:
        self.waiting: dict[str, set[asyncio.Future[RunRecord]]] = {}

    def add(self, run_id: str) -> asyncio.Future[RunRecord]:
        future: asyncio.Future[RunRecord] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(run_id, set()).add(future)
        return future

    def remove(self, run_id: str, future: asyncio.Future[RunRecord]) -> None:
        future.cancel()  # does nothing once resolved
        futures = self.waiting.get(run_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self.waiting[run_id]

    def resolve(self, runs: Iterable[RunRecord]) -> None:
        """After a commit: the runs its transaction held, as committed."""
        if not self.waiting:
            return
        for run in runs:
            if run.status.is_terminal:
                for future in self.waiting.pop(run.run_id, ()):
                    if not future.done():
                        future.set_result(run)


async def read_run(persistence: Persistence, run_id: str) -> RunRecord | None:
    async with persistence.transaction() as tx:
        return await tx.runs.get(run_id)


async def wait_for_run(
    waiters: RunWaiters,
    persistence: Persistence,
    clock: Clock,
    run_id: str,
    *,
    timeout: float | None,  # noqa: ASYNC109 (the kernel's clock, not the loop's)
    poll_interval: float,
    running_here: bool,
) -> RunRecord:
    """The run once it is terminal (see the module's comment). `running_here`: an attempt
    of the run runs in this process, or was handed to it."""
    if poll_interval <= 0:
        raise ValueError("poll_interval must be positive")
    deadline = None if timeout is None else clock.now() + timedelta(seconds=max(0.0, timeout))
    ended = waiters.add(run_id)
    # A run with an attempt running here (or about to) ends with a commit of ours: no read
    # now, which would only compete with that attempt (another process's end of it is
    # found by the next poll, as always).
    read = not running_here
    try:
        while True:
            if read:
                run = await read_run(persistence, run_id)
                if run is None:
                    raise RunNotFoundError(run_id)
                if run.status.is_terminal:
                    return run
                status = run.status.value
            else:
                status, read = "running here", True
            delay = poll_interval
            if deadline is not None:
                left = (deadline - clock.now()).total_seconds()
                if left <= 0:
                    raise TimeoutError(f"run {run_id!r} is still {status} after {timeout}s")
                delay = min(delay, left)  # one last read at the deadline
            if await _ended_within(ended, clock.sleep(delay)):
                return ended.result()
    finally:
        waiters.remove(run_id, ended)


async def _ended_within(ended: asyncio.Future[RunRecord], sleep: Awaitable[None]) -> bool:
    sleeper = asyncio.ensure_future(sleep)
    either: set[asyncio.Future[Any]] = {ended, sleeper}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        await asyncio.gather(sleeper, return_exceptions=True)
    return ended.done()
