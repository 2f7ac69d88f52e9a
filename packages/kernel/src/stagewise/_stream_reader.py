"""Following a run's stream (`Kernel.read_stream`) while its stages write it.

A reader reads the items after the last one it has, in batches, and waits between them the
way every waiter does (`_waiters`): a commit of this process that writes to the stream (or
ends the run) resolves its future at once, a hint of the change feed makes it read again,
and a poll catches whatever neither brought. It registers before each read, so an item
committed between the read and the wait is not missed until the next poll.

It ends after the item that closes the stream (skipping a close that items follow: a
rerun's stage wrote on after it), or once the run has ended and every item is read. That
second test reads the run *before* the items, in one transaction: an attempt writes only
while it holds its stage (`_run_streams`), so every item of a run that had ended when it
was read committed before that read, and the items read after it are all there will ever
be. (Read the other way round, an item committed between the two reads would be lost.)
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable

from stagewise._errors import RunNotFoundError
from stagewise._ports import ChangeFeed, Clock, Persistence
from stagewise._records import RunRecord, StreamItemRecord
from stagewise._waiters import Poll, Waiters, watching

BATCH = 500
"""Items read per statement."""


class StreamWaiters(Waiters[tuple[str, str], bool]):
    """`read_stream` callers between two reads, by (run id, key)."""

    def resolve(self, items: Iterable[StreamItemRecord], runs: Iterable[RunRecord]) -> None:
        """After a commit: the items it wrote, and the runs it held (an ended run's
        readers read once more, then end)."""
        if not self.waiting:
            return
        for item in items:
            self._set((item.run_id, item.key), True)
        self._end_runs(runs, True)


async def read_stream(
    waiters: StreamWaiters,
    persistence: Persistence,
    clock: Clock,
    feed: ChangeFeed,
    run_id: str,
    key: str,
    *,
    offset: int,
    poll_interval: float,
) -> AsyncGenerator[StreamItemRecord, None]:
    """The stream's items from `offset` on, as they are written (see the module's
    comment).

    Raises:
        RunNotFoundError: there is no such run.
        ValueError: a negative offset, or a poll interval that is not positive.
    """
    if offset < 0:
        raise ValueError("offset must be 0 or more")
    async with watching(feed, run_id) as hinted:
        poll = Poll(clock, None, poll_interval, hinted)
        while True:
            found = waiters.add((run_id, key))
            try:
                hinted.clear()  # before the read: a hint during it is not lost
                run, items = await _read(persistence, run_id, key, offset)
                for item in items:
                    offset = item.offset + 1
                    if not item.closed:
                        yield item
                if items and items[-1].closed:
                    # The end, unless a rerun wrote on after it (`_run_streams`): then the
                    # next read has those items.
                    if not (await _read(persistence, run_id, key, offset))[1]:
                        return
                    continue
                if len(items) == BATCH:
                    continue  # more to read now
                if run.status.is_terminal:
                    return
                await poll.pause(found)
            finally:
                waiters.remove((run_id, key), found)


async def _read(
    persistence: Persistence, run_id: str, key: str, offset: int
) -> tuple[RunRecord, list[StreamItemRecord]]:
    async with persistence.transaction() as tx:
        run = await tx.runs.get(run_id)  # first: see the module's comment
        if run is None:
            raise RunNotFoundError(run_id)
        return run, await tx.streams.read(run_id, key, offset=offset, limit=BATCH)
