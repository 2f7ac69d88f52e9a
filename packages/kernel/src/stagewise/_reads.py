"""Reading runs and their logs for `Kernel.list_runs` and `Kernel.run_logs`: one short
transaction each, plain reads (no lock is taken, so no writer ever waits for a reader)."""

from __future__ import annotations

from stagewise._errors import InvalidInputError, RunNotFoundError
from stagewise._ports import Persistence
from stagewise._query import (
    LogPage,
    RunFilter,
    RunPage,
    check_limit,
    decode_cursor,
    encode_cursor,
)


async def read_runs(
    persistence: Persistence, where: RunFilter, *, limit: int, cursor: str | None
) -> RunPage:
    """A page of runs (see `Kernel.list_runs`)."""
    check_limit(limit)
    before = None if cursor is None else decode_cursor(cursor)  # refused before any I/O
    async with persistence.transaction() as tx:
        # One run more than asked for says whether a next page exists, with no count.
        runs = await tx.runs.find(where, before=before, limit=limit + 1)
    page = runs[:limit]
    return RunPage(runs=page, next_cursor=encode_cursor(page[-1]) if len(runs) > limit else None)


async def read_logs(
    persistence: Persistence, run_id: str, *, after: int, stage_id: str | None, limit: int
) -> LogPage:
    """A page of a run's log (see `Kernel.run_logs`)."""
    check_limit(limit)
    if after < 0:
        raise InvalidInputError(f"after must be 0 or a line's id, not {after}")
    async with persistence.transaction() as tx:
        # The run before its lines: a run's lines are committed with its end at the latest,
        # so a status read as terminal here means the lines read next are all there are
        # (read the other way round, lines committed between the two reads would be lost
        # to a follower that stops at the end).
        run = await tx.runs.get(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        lines = await tx.logs.for_run(run_id, after=after, stage_id=stage_id, limit=limit + 1)
    page = lines[:limit]
    return LogPage(
        lines=page,
        next_after=page[-1].id if page else after,
        more=len(lines) > limit,
        status=run.status,
    )
