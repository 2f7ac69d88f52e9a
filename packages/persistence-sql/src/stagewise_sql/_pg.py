"""PostgreSQL's hot path on the driver: the statements every stage runs, without SQLAlchemy.

Theory of operation
-------------------
A stage's transaction locks its runs, reads their stages and writes runs, stages, events
and deliveries. Through SQLAlchemy each statement costs about as much Python as the round
trip itself (compiling or fetching the cached form, bind and result processing per row), and
each write is a round trip of its own. Here (`PgPath`, on the transaction's asyncpg
connection):

* the reads run on the asyncpg connection directly, with fixed statement texts (so asyncpg
  prepares each once per connection) and rows mapped straight to records;
* the writes of a transaction are collected (`_writes.Writes`) and sent as **one**
  statement, a data-modifying CTE with one `unnest` part per table, when the transaction
  next reads or commits. Keys are merged in memory first, because one statement may not
  touch a row twice.

The transaction is the driver's own (BEGIN, COMMIT and ROLLBACK sent on it, `_engine`), so
statements sent here and through SQLAlchemy share it. SQLite's counterpart is `_lite`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sqlalchemy import Column, Float, Integer, Table

from stagewise._records import RunRecord, StageRecord, with_stages
from stagewise_sql import _rows
from stagewise_sql._rows import Fields
from stagewise_sql._schema import JSON_VALUE, UtcDateTime, utc
from stagewise_sql._schema import runs as runs_t
from stagewise_sql._schema import stages as stages_t
from stagewise_sql._writes import NEW_RUNS, PARTS, Part, Values, Writes

RUNS_CHANNEL = "stagewise_runs"
"""The PostgreSQL NOTIFY channel that new runs announce themselves on (sent with the write
that inserts them, delivered on commit), so that an idle worker claims them at once instead
of at its next claim interval."""

# --- reads -------------------------------------------------------------------------------


def _columns(table: Table) -> str:
    return ", ".join(c.name for c in table.columns)


_RUNS_LOCK_MANY = (
    f"SELECT {_columns(runs_t)} FROM {runs_t.name} WHERE run_id = ANY($1::text[]) "
    "ORDER BY run_id FOR UPDATE"
)
_STAGES_OF_RUNS = (
    f"SELECT {_columns(stages_t)} FROM {stages_t.name} WHERE run_id = ANY($1::text[]) "
    "ORDER BY run_id, group_index, stage_id"
)
_RUNS_LOCK_WITH_STAGES = (
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
_RUNS_CLAIM_PENDING = (
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


def _part_sql(part: Part, first: int) -> str:
    """The part's `INSERT ... SELECT FROM unnest(...)`, its arrays numbered from `first`."""
    columns = list(part.table.columns)
    arrays = ", ".join(f"${first + i}::{_pg_type(c)}[]" for i, c in enumerate(columns))
    picked = ", ".join(
        f"u.{c.name}::jsonb" if c.type is JSON_VALUE else f"u.{c.name}" for c in columns
    )
    names = ", ".join(part.names)
    return (
        f"INSERT INTO {part.table.name} ({names}) "
        f"SELECT {picked} FROM unnest({arrays}) AS u({names})" + part.conflict_clause("EXCLUDED")
    )


_ENCODERS = {part: tuple(_encoder(c) for c in part.table.columns) for part in PARTS}
_STATEMENTS: dict[tuple[tuple[Part, ...], bool], str] = {}


def _write_statement(parts: tuple[Part, ...], notify: bool) -> str:
    """The one statement for `parts` (cached by asyncpg per text: at most one prepared
    statement per combination)."""
    statement = _STATEMENTS.get((parts, notify))
    if statement is None:
        ctes: list[str] = []
        number = 1
        for part in parts:
            ctes.append(f"w{len(ctes)} AS ({_part_sql(part, number)})")
            number += len(part.names)
        main = f"SELECT pg_notify(${number}, ${number + 1})" if notify else "SELECT 1"
        statement = _STATEMENTS[(parts, notify)] = f"WITH {', '.join(ctes)} {main}"
    return statement


def _arrays(part: Part, rows: Sequence[Values]) -> list[list[Any]]:
    return [
        [encode(row[name]) for row in rows]
        for name, encode in zip(part.names, _ENCODERS[part], strict=True)
    ]


# --- the path ----------------------------------------------------------------------------


class PgPath:
    """PostgreSQL's hot path on one transaction's asyncpg connection (see the module
    docstring). `used` turns true with its first statement."""

    __slots__ = ("_notify", "_reraise", "driver", "used", "writes")

    def __init__(
        self,
        driver: Any,
        *,
        notify: tuple[str, str],
        reraise: Callable[[Exception], NoReturn],
    ) -> None:
        self.driver = driver
        self.writes = Writes()
        self.used = False
        self._notify = notify
        """(channel, payload) to NOTIFY with writes that insert runs."""
        self._reraise = reraise

    async def begin(self) -> None:
        await self.driver.execute("BEGIN ISOLATION LEVEL READ COMMITTED")

    async def flush(self) -> None:
        """Send the collected writes now, as one statement."""
        taken = self.writes.take()
        if not taken:
            return
        parts = tuple(part for part, _ in taken)
        notify = NEW_RUNS in parts
        args: list[Any] = []
        for part, rows in taken:
            args += _arrays(part, rows)
        if notify:
            args += self._notify
        self.used = True
        try:
            await self.driver.execute(_write_statement(parts, notify), *args)
        except Exception as exc:
            self._reraise(exc)

    async def commit(self) -> None:
        await self.flush()
        await self.driver.execute("COMMIT")

    async def rollback(self) -> None:
        self.writes.take()
        await self.driver.execute("ROLLBACK")

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        await self.flush()
        self.used = True
        try:
            rows = await self.driver.fetch(sql, *args)
        except Exception as exc:
            self._reraise(exc)
        return [Fields(row.items()) for row in rows]

    async def lock_many(self, run_ids: Sequence[str]) -> list[RunRecord]:
        rows = await self._fetch(_RUNS_LOCK_MANY, run_ids)
        return [_rows.run_from_row(row) for row in rows]

    async def for_runs(self, run_ids: Sequence[str]) -> list[StageRecord]:
        rows = await self._fetch(_STAGES_OF_RUNS, run_ids)
        return [_rows.stage_from_row(row) for row in rows]

    async def lock_with_stages(
        self, run_ids: Sequence[str]
    ) -> list[tuple[RunRecord, list[StageRecord]]]:
        rows = await self._fetch(_RUNS_LOCK_WITH_STAGES, run_ids)
        current = [
            _rows.stage_from_row(Fields(s.items()))
            for row in rows
            if row.locked_version == row.seen_version
            for s in row.stages
        ]
        changed = [row.run_id for row in rows if row.locked_version != row.seen_version]
        if changed:  # written while we waited for the lock: their stages again, now
            current += await self.for_runs(changed)
        return with_stages([_rows.run_from_row(row) for row in rows], current)

    async def claim_pending(self, limit: int) -> list[RunRecord]:
        rows = await self._fetch(_RUNS_CLAIM_PENDING, limit)
        return [_rows.run_from_row(row) for row in rows]
