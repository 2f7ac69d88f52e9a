"""PostgreSQL's hot path on the driver: the statements every stage runs, without SQLAlchemy.

Theory of operation
-------------------
A stage's transaction locks its runs, reads their stages and writes runs, stages, events
and deliveries. Through SQLAlchemy each statement costs about as much Python as the round
trip itself (compiling or fetching the cached form, bind and result processing per row), and
each write is a round trip of its own. Here:

* the reads run on the asyncpg connection directly (`Link.fetch`), with fixed statement
  texts (so asyncpg prepares each once per connection) and rows mapped straight to records;
* the writes of a transaction are collected (`PgWrites`) and sent as **one** statement, a
  data-modifying CTE with one `unnest` part per table, when the transaction next reads or
  commits. Keys are merged in memory first (a run inserted then saved is one insert of its
  last state; a row saved twice is written once), because one statement may not touch a row
  twice.

Deferring a write changes nothing a caller can see: every statement of the transaction, on
SQLAlchemy or the driver, sends the collected writes first, so reads see them and the order
of effects is kept, and an error (a duplicate key) surfaces inside the transaction, which
then rolls back as a whole. Foreign keys to runs and events are DEFERRABLE, checked at
commit, so the parts may go in any order.

Only PostgreSQL transactions collect writes; SQLite and single statements write at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Float, Integer, Table

from stagewise._records import Delivery, EventRecord, RunRecord, StageRecord
from stagewise_sql import _rows
from stagewise_sql._schema import JSON_VALUE, UtcDateTime, utc
from stagewise_sql._schema import deliveries as deliveries_t
from stagewise_sql._schema import events as events_t
from stagewise_sql._schema import runs as runs_t
from stagewise_sql._schema import stages as stages_t


class Fields:
    """An asyncpg record (a row, or a composite value in one) whose columns read as
    attributes, like a SQLAlchemy row, so the same mappers in `_rows` serve both."""

    __slots__ = ("_record",)

    def __init__(self, record: Any) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        try:
            return self._record[name]
        except KeyError:
            raise AttributeError(name) from None


RUNS_CHANNEL = "stagewise_runs"
"""The PostgreSQL NOTIFY channel that new runs announce themselves on (sent with the write
that inserts them, delivered on commit), so that an idle worker claims them at once instead
of at its next claim interval."""

# --- reads -------------------------------------------------------------------------------


def _columns(table: Table) -> str:
    return ", ".join(c.name for c in table.columns)


RUNS_LOCK_MANY = (
    f"SELECT {_columns(runs_t)} FROM {runs_t.name} WHERE run_id = ANY($1::text[]) "
    "ORDER BY run_id FOR UPDATE"
)
STAGES_OF_RUNS = (
    f"SELECT {_columns(stages_t)} FROM {stages_t.name} WHERE run_id = ANY($1::text[]) "
    "ORDER BY run_id, group_index, stage_id"
)
RUNS_LOCK_WITH_STAGES = (
    f"WITH locked AS (SELECT {_columns(runs_t)}, xmin::text AS locked_version "
    f"FROM {runs_t.name} WHERE run_id = ANY($1::text[]) ORDER BY run_id FOR UPDATE) "
    f"SELECT locked.*, (SELECT r.xmin::text FROM {runs_t.name} r WHERE r.run_id = locked.run_id)"
    f" AS seen_version, ARRAY(SELECT s FROM {stages_t.name} s WHERE s.run_id = locked.run_id "
    "ORDER BY s.group_index, s.stage_id) AS stages FROM locked ORDER BY locked.run_id"
)
"""`lock_with_stages` in one statement. The stages are read with the statement's snapshot,
taken before the lock was granted; the locked row is the newest version (READ COMMITTED
re-reads a row that changed while it waited), the subquery's the snapshot's. Equal
versions: nobody wrote the run since the snapshot, so (by the rule the kernel keeps, see
the port) nobody wrote its stages either, and the stages read are current."""
RUNS_CLAIM_PENDING = (
    f"SELECT {_columns(runs_t)} FROM {runs_t.name} WHERE status = 'PENDING' "
    "ORDER BY priority DESC, created_at, run_id LIMIT $1 FOR UPDATE SKIP LOCKED"
)


# --- writes ------------------------------------------------------------------------------


def _encoder(column: Column[Any]) -> Callable[[Any], Any]:
    if column.type is JSON_VALUE:
        return lambda v: None if v is None else json.dumps(v)
    if isinstance(column.type, UtcDateTime):
        return utc
    return lambda v: v


def _pg_type(column: Column[Any]) -> str:
    if isinstance(column.type, UtcDateTime):
        return "timestamptz"
    if isinstance(column.type, Integer):
        return "int4"
    if isinstance(column.type, Float):
        return "float8"
    return "text"  # text, keys, statuses, and JSON as text (cast to jsonb in the SELECT)


@dataclass(frozen=True)
class _Part:
    """One table's rows in the write statement: `INSERT ... SELECT FROM unnest(...)`."""

    table: Table
    upsert: bool
    names: tuple[str, ...] = field(init=False)
    encoders: tuple[Callable[[Any], Any], ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(c.name for c in self.table.columns))
        encoders = tuple(_encoder(c) for c in self.table.columns)
        object.__setattr__(self, "encoders", encoders)

    def sql(self, first: int) -> str:
        """The part's INSERT, its array parameters numbered from `first`."""
        columns = list(self.table.columns)
        arrays = ", ".join(f"${first + i}::{_pg_type(c)}[]" for i, c in enumerate(columns))
        picked = ", ".join(
            f"u.{c.name}::jsonb" if c.type is JSON_VALUE else f"u.{c.name}" for c in columns
        )
        statement = (
            f"INSERT INTO {self.table.name} ({', '.join(self.names)}) "
            f"SELECT {picked} FROM unnest({arrays}) AS u({', '.join(self.names)})"
        )
        if self.upsert:
            keys = [c.name for c in self.table.primary_key.columns]
            sets = ", ".join(f"{n} = EXCLUDED.{n}" for n in self.names if n not in keys)
            statement += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
        return statement

    def arrays(self, rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
        return [
            [encode(row[name]) for row in rows]
            for name, encode in zip(self.names, self.encoders, strict=True)
        ]


_NEW_RUNS = _Part(runs_t, upsert=False)
_SAVED_RUNS = _Part(runs_t, upsert=True)
_STAGES = _Part(stages_t, upsert=True)
_EVENTS = _Part(events_t, upsert=False)
_DELIVERIES = _Part(deliveries_t, upsert=False)
_PARTS = (_NEW_RUNS, _SAVED_RUNS, _STAGES, _EVENTS, _DELIVERIES)


def _write_statement(present: tuple[bool, ...], notify: bool) -> str:
    """The one statement for the parts present (cached by asyncpg per text: at most one
    prepared statement per combination)."""
    ctes: list[str] = []
    number = 1
    for part, used in zip(_PARTS, present, strict=True):
        if used:
            ctes.append(f"w{len(ctes)} AS ({part.sql(number)})")
            number += len(part.names)
    main = f"SELECT pg_notify(${number}, ${number + 1})" if notify else "SELECT 1"
    return f"WITH {', '.join(ctes)} {main}"


_STATEMENTS: dict[tuple[tuple[bool, ...], bool], str] = {}


class PgWrites:
    """The writes of one PostgreSQL transaction, not yet sent (see the module docstring)."""

    __slots__ = ("_deliveries", "_events", "_new_runs", "_saved_runs", "_stages", "notify")

    def __init__(self, notify: tuple[str, str] | None) -> None:
        self.notify = notify
        """(channel, payload) to NOTIFY when new runs go in."""
        self._new_runs: dict[str, RunRecord] = {}
        self._saved_runs: dict[str, RunRecord] = {}
        self._stages: dict[tuple[str, str], StageRecord] = {}
        self._events: list[EventRecord] = []
        self._deliveries: list[Delivery] = []

    def __bool__(self) -> bool:
        return bool(
            self._new_runs or self._saved_runs or self._stages or self._events or self._deliveries
        )

    def insert_run(self, run: RunRecord) -> bool:
        """Collect an insert; False when the run is already collected (the caller sends
        what is collected first, so the insert meets the row and fails as it should)."""
        if run.run_id in self._new_runs or run.run_id in self._saved_runs:
            return False
        self._new_runs[run.run_id] = run
        return True

    def save_runs(self, runs: Sequence[RunRecord]) -> None:
        for run in runs:
            if run.run_id in self._new_runs:
                self._new_runs[run.run_id] = run  # still one insert, of the last state
            else:
                self._saved_runs[run.run_id] = run

    def save_stages(self, stages: Sequence[StageRecord]) -> None:
        for stage in stages:
            self._stages[(stage.run_id, stage.stage_id)] = stage

    def append(self, events: Sequence[EventRecord], deliveries: Sequence[Delivery]) -> None:
        self._events.extend(events)
        self._deliveries.extend(deliveries)

    def take(self) -> tuple[str, list[Any]]:
        """The statement and its arguments for everything collected, which is forgotten."""
        rows: tuple[list[dict[str, Any]], ...] = (
            [_rows.run_values(r) for r in self._new_runs.values()],
            [_rows.run_values(r) for r in self._saved_runs.values()],
            [_rows.stage_values(s) for s in self._stages.values()],
            [_rows.event_values(e) for e in self._events],
            [_rows.delivery_values(d) for d in self._deliveries],
        )
        notify = self.notify if self._new_runs else None
        self._new_runs, self._saved_runs, self._stages = {}, {}, {}
        self._events, self._deliveries = [], []
        present = tuple(bool(r) for r in rows)
        key = (present, notify is not None)
        statement = _STATEMENTS.get(key)
        if statement is None:
            statement = _STATEMENTS[key] = _write_statement(*key)
        args: list[Any] = []
        for part, part_rows in zip(_PARTS, rows, strict=True):
            if part_rows:
                args += part.arrays(part_rows)
        if notify is not None:
            args += notify
        return statement, args
