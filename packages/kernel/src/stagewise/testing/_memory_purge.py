"""Purging finished runs in memory (`RunStore.finished_before` and `purge`): a part of
`InMemoryPersistence`'s run store, kept apart so that its module stays small."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from stagewise._records import RunRecord
from stagewise._states import RunStatus

_FINISHED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class _Tables(Protocol):
    def read(self, table: str) -> dict[Any, Any]: ...
    def write(self, table: str) -> dict[Any, Any]: ...


async def finished_before(tx: _Tables, before: datetime, limit: int) -> list[RunRecord]:
    """The memory store holds one lock for everything, so choosing and deleting cannot race
    with a worker."""
    rows = [
        r
        for r in tx.read("runs").values()
        if r.status in _FINISHED and r.finished_at is not None and r.finished_at < before
    ]
    rows.sort(key=lambda r: (r.finished_at, r.run_id))
    return rows[:limit]


def purge(tx: _Tables, run_ids: Sequence[str]) -> int:
    """The same rows as the SQL schema's cascades: the runs, their stages, events, the
    events' deliveries, log lines, signals, published values and stream items."""
    gone = set(run_ids) & set(tx.read("runs"))
    if not gone:
        return 0
    for key in gone:
        del tx.write("runs")[key]
    stages = tx.write("stages")
    for key in [k for k in stages if k[0] in gone]:
        del stages[key]
    for table in ("events", "deliveries", "logs", "signals", "values", "streams"):
        rows = tx.write(table)
        for key in [k for k, row in rows.items() if row.run_id in gone]:
            del rows[key]
    return len(gone)
