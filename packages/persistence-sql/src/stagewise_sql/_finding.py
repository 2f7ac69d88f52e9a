"""Listing runs (`RunStore.find`) and reading a run's log (`LogStore.for_run`) in SQL.

The listing is `ORDER BY created_at DESC, run_id DESC` with the keyset cursor as a row
comparison, `(created_at, run_id) < (:at, :id)`, which both databases answer from
`ix_stagewise_runs_created` read backwards, stopping at the limit. The filters are the
reference's (`RunFilter.matches`), written per dialect where they must be:

* metadata on PostgreSQL is one JSONB containment, `metadata @> '{"k": "v", ...}'`, which
  the GIN index `ix_stagewise_runs_metadata` serves; the query repeats that index's
  predicate (`metadata <> '{}'`), which any run that matches a non-empty filter passes, so
  that the planner may use the partial index;
* on SQLite, `json_extract(metadata, '$."k"') = 'v'` for each key (keys are restricted to
  characters a JSON path takes as they are, and the path is a bound value anyway).

A log's order is its `id`: for one run, lines are written under the run's lock, so their
ids are taken in the order they commit and "after id N" misses none.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    bindparam,
    func,
    literal,
    literal_column,
    select,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB

from stagewise._query import RunFilter
from stagewise._records import LogLine, RunValueRecord, SignalRecord, StreamItemRecord
from stagewise_sql import _rows
from stagewise_sql._schema import logs, run_values, runs, signals, stream_items
from stagewise_sql._statements import Store, time_param


def find_statement(
    where: RunFilter, before: tuple[datetime, str] | None, limit: int, dialect: str
) -> Select[Any]:
    """The `SELECT` of `RunStore.find`."""
    c = runs.c
    conditions: list[ColumnElement[bool]] = []
    if where.run_status is not None:
        conditions.append(c.status == where.run_status.value)
    if where.workflow_id is not None:
        conditions.append(c.workflow_id == where.workflow_id)
    if where.workflow_version is not None:
        conditions.append(c.workflow_version == where.workflow_version)
    bounds = (
        (c.created_at, where.created_after, where.created_before),
        (c.finished_at, where.finished_after, where.finished_before),
    )
    for column, after, until in bounds:  # half-open: after <= t < before
        if after is not None:
            conditions.append(column >= time_param(f"{column.name}_from", after))
        if until is not None:
            conditions.append(column < time_param(f"{column.name}_to", until))
    if where.metadata:
        conditions += _metadata(where.metadata, dialect)
    if before is not None:
        at, run_id = before
        key = tuple_(time_param("before_at", at), bindparam("before_id", run_id))
        conditions.append(tuple_(c.created_at, c.run_id) < key)
    return (
        select(runs).where(*conditions).order_by(c.created_at.desc(), c.run_id.desc()).limit(limit)
    )


def _metadata(wanted: Mapping[str, str], dialect: str) -> list[ColumnElement[bool]]:
    column = runs.c.metadata
    if dialect == "postgresql":
        # A constant, not a parameter: a generic plan can prove the partial index's
        # predicate only from the statement's own text.
        labelled = type_coerce(column, JSONB) != literal_column("'{}'::jsonb", JSONB)
        return [type_coerce(column, JSONB).contains(dict(wanted)), labelled]
    return [func.json_extract(column, literal(f'$."{k}"')) == v for k, v in wanted.items()]


class SqlSignalStore(Store):
    """A run's mailbox (`SignalStore`)."""

    async def for_run(self, run_id: str) -> list[SignalRecord]:
        stmt = select(signals).where(signals.c.run_id == run_id).order_by(signals.c.seq)
        return [_rows.signal_from_row(row) for row in await self._link.execute(stmt)]

    async def pending(self, run_id: str, topic: str) -> list[SignalRecord]:
        stmt = (  # served by ix_stagewise_signals_pending
            select(signals)
            .where(
                signals.c.run_id == run_id,
                signals.c.topic == topic,
                signals.c.consumed_by.is_(None),
            )
            .order_by(signals.c.seq)
        )
        return [_rows.signal_from_row(row) for row in await self._link.execute(stmt)]

    async def by_key(self, run_id: str, idempotency_key: str) -> SignalRecord | None:
        stmt = select(signals).where(
            signals.c.run_id == run_id, signals.c.idempotency_key == idempotency_key
        )
        row = (await self._link.execute(stmt)).first()
        return None if row is None else _rows.signal_from_row(row)


class SqlValueStore(Store):
    """The values runs published (`ValueStore`)."""

    async def get(self, run_id: str, key: str) -> RunValueRecord | None:
        stmt = select(run_values).where(run_values.c.run_id == run_id, run_values.c.key == key)
        row = (await self._link.execute(stmt)).first()
        return None if row is None else _rows.value_from_row(row)

    async def for_run(self, run_id: str) -> list[RunValueRecord]:
        stmt = select(run_values).where(run_values.c.run_id == run_id).order_by(run_values.c.key)
        return [_rows.value_from_row(row) for row in await self._link.execute(stmt)]


class SqlStreamStore(Store):
    """The runs' streams (`StreamStore`): read by the primary key's order."""

    async def tail(self, run_id: str, key: str) -> StreamItemRecord | None:
        stmt = (
            select(stream_items)
            .where(stream_items.c.run_id == run_id, stream_items.c.key == key)
            .order_by(stream_items.c.seq.desc())
            .limit(1)
        )
        row = (await self._link.execute(stmt)).first()
        return None if row is None else _rows.stream_item_from_row(row)

    async def read(
        self, run_id: str, key: str, *, offset: int = 0, limit: int = 1000
    ) -> list[StreamItemRecord]:
        stmt = (
            select(stream_items)
            .where(
                stream_items.c.run_id == run_id,
                stream_items.c.key == key,
                stream_items.c.seq >= offset,
            )
            .order_by(stream_items.c.seq)
            .limit(limit)
        )
        return [_rows.stream_item_from_row(row) for row in await self._link.execute(stmt)]


class SqlLogStore(Store):
    async def for_run(
        self, run_id: str, *, after: int = 0, stage_id: str | None = None, limit: int = 1000
    ) -> list[LogLine]:
        stmt = select(logs).where(logs.c.run_id == run_id, logs.c.id > after)
        if stage_id is not None:
            stmt = stmt.where(logs.c.stage_id == stage_id)
        stmt = stmt.order_by(logs.c.id).limit(limit)  # served by ix_stagewise_logs_run
        return [_rows.log_line_from_row(row) for row in await self._link.execute(stmt)]
