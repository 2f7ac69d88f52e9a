"""Purging finished runs (`RunStore.finished_before`, `RunStore.purge`): the statements.

Candidates are chosen and locked by one statement that checks their state (finished, before
the cutoff), oldest first by `ix_stagewise_runs_finished`, skipping rows another
transaction holds on PostgreSQL (`FOR UPDATE SKIP LOCKED`; SQLite's write transaction is
already exclusive). Deleting a run deletes its stage rows, events, log lines and, through
the events, their deliveries by the schema's `ON DELETE CASCADE`: one statement per batch,
whatever the run had.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Delete, Select, bindparam, delete, select

from stagewise._states import RunStatus
from stagewise_sql._schema import runs
from stagewise_sql._statements import time_param

FINISHED = [RunStatus.COMPLETED.value, RunStatus.FAILED.value, RunStatus.CANCELLED.value]


def finished_before_statement(before: datetime, limit: int, dialect: str) -> Select[Any]:
    stmt = (
        select(runs)
        .where(
            runs.c.finished_at.is_not(None),
            runs.c.finished_at < time_param("before", before),
            runs.c.status.in_(FINISHED),
        )
        .order_by(runs.c.finished_at, runs.c.run_id)
        .limit(limit)
    )
    if dialect == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return stmt


def purge_statement(run_ids: Sequence[str]) -> Delete:
    return delete(runs).where(runs.c.run_id.in_(bindparam("ids", list(run_ids), expanding=True)))
