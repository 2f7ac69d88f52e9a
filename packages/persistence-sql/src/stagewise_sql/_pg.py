"""PostgreSQL's hot path on the driver: the statements every stage runs, without SQLAlchemy.

Theory of operation
-------------------
A stage's transaction locks its runs with their stages and writes what the kernel decided
(a `Changeset`: runs, stages, events, deliveries, logs, keys). Through SQLAlchemy each
statement costs about as much Python as the round trip itself (compiling or fetching the
cached form, bind and result processing per row), and each table's write is a round trip
of its own. Here (`PgPath`, on the transaction's asyncpg connection):

* the reads run on the asyncpg connection directly, with fixed statement texts (so asyncpg
  prepares each once per connection) and rows mapped straight to records;
* the changeset is held (`_writes.PendingWrites`) and sent as **one** statement, a
  data-modifying CTE with one `unnest` part per way of writing a table, when the
  transaction next reads or commits. A changeset never names a row twice (the kernel
  merges its changes first), as one statement may not touch a row twice; run updates
  carry the version they expect, and the statement says how many found it.

The transaction is the driver's own (BEGIN, COMMIT and ROLLBACK sent on it, `_engine`), so
statements sent here and through SQLAlchemy share it. SQLite's counterpart is `_lite`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sqlalchemy import BigInteger, Boolean, Column, Float, Integer, Table

from stagewise._records import RunRecord, StageRecord, with_stages
from stagewise_sql import _rows
from stagewise_sql._rows import Fields
from stagewise_sql._schema import JSON_VALUE, UtcDateTime, utc
from stagewise_sql._schema import runs as runs_t
from stagewise_sql._schema import stages as stages_t
from stagewise_sql._writes import (
    EXPECTED,
    NEW_RUNS,
    RUN_UPDATES,
    WRITES,
    PendingWrites,
    TableWrite,
    Values,
    check_updated,
)

RUNS_CHANNEL = "stagewise_runs"
"""The PostgreSQL NOTIFY channel that new runs announce themselves on (sent with the write
that inserts them, delivered on commit), so that an idle worker claims them at once instead
of at its next claim interval."""
CHANGES_CHANNEL = "stagewise_changes"
"""The NOTIFY channel of the change feed (`_feed`): the ids of the runs a transaction
published a value of, wrote a stream item of, or ended, space-separated; "*" when they
would not fit in one notification."""
_PAYLOAD_LIMIT = 7000  # bytes: PostgreSQL's limit is 8000

# --- reads -------------------------------------------------------------------------------


def _columns(table: Table) -> str:
    return ", ".join(c.name for c in table.columns)


_STAGES_OF_RUNS = (
    f"SELECT {_columns(stages_t)} FROM {stages_t.name} WHERE run_id = ANY($1::text[]) "
    "ORDER BY run_id, group_index, stage_id"
)


def _load_sql(skip_locked: bool) -> str:
    lock = "FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE"
    return (
        f"WITH locked AS (SELECT {_columns(runs_t)} FROM {runs_t.name} "
        f"WHERE run_id = ANY($1::text[]) ORDER BY run_id {lock}) "
        f"SELECT locked.*, (SELECT r.version FROM {runs_t.name} r "
        "WHERE r.run_id = locked.run_id) AS seen_version, "
        f"ARRAY(SELECT s FROM {stages_t.name} s WHERE s.run_id = locked.run_id "
        "ORDER BY s.group_index, s.stage_id) AS stages FROM locked ORDER BY locked.run_id"
    )


_LOAD = {skip: _load_sql(skip) for skip in (False, True)}
"""`load` in one statement. The stages are read with the statement's snapshot, taken
before the lock was granted; the locked row is the newest version (READ COMMITTED re-reads
a row that changed while it waited), the subquery's is the snapshot's. Equal versions:
nobody wrote the run since the snapshot, so (every change to a run's stages comes with its
row at the next version) nobody wrote its stages either, and the stages read are current.
A run whose versions differ has its stages read again, now that it is locked."""
_RUNS_CLAIM_PENDING = (
    f"SELECT {_columns(runs_t)} FROM {runs_t.name} WHERE status = 'PENDING' "
    "AND ($2::bool OR EXISTS (SELECT 1 FROM unnest($3::text[], $4::text[]) AS k(w, v) "
    "WHERE k.w = workflow_id AND (workflow_version IS NULL OR k.v = workflow_version))) "
    "ORDER BY priority DESC, created_at, run_id LIMIT $1 FOR UPDATE SKIP LOCKED"
)
"""Claim pending runs, of the given (workflow, version) pairs unless $2 (any) is true."""


# --- writes ------------------------------------------------------------------------------


def _encoder(column: Column[Any] | None) -> Callable[[Any], Any]:
    if column is not None and column.type is JSON_VALUE:
        return lambda v: None if v is None else json.dumps(v)
    if column is not None and isinstance(column.type, UtcDateTime):
        return utc
    return lambda v: v


def _pg_type(column: Column[Any] | None) -> str:
    if column is None or isinstance(column.type, Integer):  # None: the expected version
        return "int8" if column is not None and isinstance(column.type, BigInteger) else "int4"
    if isinstance(column.type, UtcDateTime):
        return "timestamptz"
    if isinstance(column.type, Float):
        return "float8"
    if isinstance(column.type, Boolean):
        return "bool"
    return "text"  # text, keys, statuses, and JSON as text (cast to jsonb where it is read)


def _fields(how: TableWrite) -> tuple[str, ...]:
    """The parameters of one way of writing: its columns (and the expected version)."""
    return how.names + ((EXPECTED,) if how.how == "update" else ())


def _column(how: TableWrite, name: str) -> Column[Any] | None:
    return how.table.c.get(name)


def _unnest(how: TableWrite, first: int) -> str:
    """`unnest(...) AS u(...)` over the parameters of `how`, numbered from `first`."""
    names = _fields(how)
    arrays = ", ".join(f"${first + i}::{_pg_type(_column(how, n))}[]" for i, n in enumerate(names))
    return f"unnest({arrays}) AS u({', '.join(names)})"


def _value(how: TableWrite, name: str) -> str:
    column = _column(how, name)
    return f"u.{name}::jsonb" if column is not None and column.type is JSON_VALUE else f"u.{name}"


def _write_sql(how: TableWrite, first: int) -> str:
    """The data-modifying statement of one way of writing, its arrays numbered from
    `first`."""
    table, rows = how.table.name, _unnest(how, first)
    on_keys = " AND ".join(f"t.{k} = u.{k}" for k in how.keys)
    if how.how == "delete":
        return f"DELETE FROM {table} AS t USING {rows} WHERE {on_keys}"
    if how.how == "update":
        targets = ", ".join(how.changed)
        values = ", ".join(_value(how, n) for n in how.changed)
        return (
            f"UPDATE {table} AS t SET ({targets}) = ({values}) FROM {rows} "
            f"WHERE {on_keys} AND t.version = u.{EXPECTED} RETURNING t.run_id"
        )
    picked = ", ".join(_value(how, n) for n in how.names)
    return (
        f"INSERT INTO {table} ({', '.join(how.names)}) SELECT {picked} FROM {rows}"
        + how.conflict_clause("EXCLUDED")
    )


_ENCODERS = {how: tuple(_encoder(_column(how, n)) for n in _fields(how)) for how in WRITES}
_STATEMENTS: dict[tuple[tuple[TableWrite, ...], bool], str] = {}


def _write_statement(ways: tuple[TableWrite, ...], changed: bool) -> str:
    """The one statement for `ways` (prepared by asyncpg per text: at most one per
    combination). It answers with the NOTIFY for new runs, the number of runs updated and,
    when `changed`, the change feed's NOTIFY."""
    statement = _STATEMENTS.get((ways, changed))
    if statement is None:
        ctes: list[str] = []
        number = 1
        updated = "0"
        for how in ways:
            if how is RUN_UPDATES:
                updated = f"(SELECT count(*) FROM w{len(ctes)})"
            ctes.append(f"w{len(ctes)} AS ({_write_sql(how, number)})")
            number += len(_fields(how))
        notify = "NULL"
        if NEW_RUNS in ways:
            notify = f"pg_notify(${number}, ${number + 1})"
            number += 2
        feed = f"pg_notify(${number}, ${number + 1})" if changed else "NULL"
        statement = f"WITH {', '.join(ctes)} SELECT {notify}, {updated}, {feed}"
        _STATEMENTS[(ways, changed)] = statement
    return statement


def _feed_payload(run_ids: list[str]) -> str:
    payload = " ".join(run_ids)
    return payload if len(payload.encode()) <= _PAYLOAD_LIMIT else "*"


def _arrays(how: TableWrite, rows: Sequence[Values]) -> list[list[Any]]:
    return [
        [encode(row[name]) for row in rows]
        for name, encode in zip(_fields(how), _ENCODERS[how], strict=True)
    ]


# --- the path ----------------------------------------------------------------------------


class PgPath:
    """PostgreSQL's hot path on one transaction's asyncpg connection (see the module
    docstring). `used` turns true with its first statement."""

    __slots__ = ("_notify", "_reraise", "driver", "failed", "used", "writes")

    def __init__(
        self,
        driver: Any,
        *,
        notify: tuple[str, str],
        reraise: Callable[[Exception], NoReturn],
    ) -> None:
        self.driver = driver
        self.writes = PendingWrites()
        self.used = False
        self.failed: Exception | None = None
        self._notify = notify
        """(channel, payload) to NOTIFY with writes that insert runs."""
        self._reraise = reraise

    async def begin(self) -> None:
        await self.driver.execute("BEGIN ISOLATION LEVEL READ COMMITTED")

    async def flush(self) -> None:
        """Send the held writes now, as one statement."""
        taken, updated_runs, changed = self.writes.take()
        if not taken:
            return
        ways = tuple(how for how, _ in taken)
        args: list[Any] = []
        for how, rows in taken:
            args += _arrays(how, rows)
        if NEW_RUNS in ways:
            args += self._notify
        if changed:
            args += (CHANGES_CHANNEL, _feed_payload(changed))
        self.used = True
        try:
            row = await self.driver.fetchrow(_write_statement(ways, bool(changed)), *args)
            check_updated(updated_runs, row[1])
        except Exception as exc:
            self.failed = self.failed or exc
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
            self.failed = self.failed or exc
            self._reraise(exc)
        return [Fields(row.items()) for row in rows]

    async def load(
        self, run_ids: Sequence[str], *, skip_locked: bool = False
    ) -> list[tuple[RunRecord, list[StageRecord]]]:
        rows = await self._fetch(_LOAD[skip_locked], run_ids)
        current = [
            _rows.stage_from_row(Fields(s.items()))
            for row in rows
            if row.version == row.seen_version
            for s in row.stages
        ]
        changed = [row.run_id for row in rows if row.version != row.seen_version]
        if changed:  # written while we waited for the lock: their stages again, now
            stale = await self._fetch(_STAGES_OF_RUNS, changed)
            current += [_rows.stage_from_row(row) for row in stale]
        return with_stages([_rows.run_from_row(row) for row in rows], current)

    async def claim_pending(
        self, limit: int, *, workflows: Sequence[tuple[str, str]] | None = None
    ) -> list[RunRecord]:
        pairs = workflows or ()
        ids, versions = [w for w, _ in pairs], [v for _, v in pairs]
        rows = await self._fetch(_RUNS_CLAIM_PENDING, limit, workflows is None, ids, versions)
        return [_rows.run_from_row(row) for row in rows]
