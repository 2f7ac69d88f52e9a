"""SQLite's hot path on the driver: a stage's statements in as few trips to the driver's
thread as it has steps.

Theory of operation
-------------------
aiosqlite runs each sqlite3 call on a thread of its own, one connection per thread, and
every call is a trip there and back through the event loop. Through SQLAlchemy a statement
is three or four such calls (open a cursor, execute, fetch, close), plus compiling or
fetching the cached form and processing each row: a chained stage's transaction (BEGIN, two
reads, four writes, COMMIT) made about 27 trips. Here a transaction takes one trip per
step:

* BEGIN IMMEDIATE;
* the reads of a step together (`load`: the runs and their stages), with fixed
  statement texts (sqlite3 caches each one prepared per connection) and rows decoded by the
  column types' own SQLAlchemy processors, so values read and written here are the very
  values SQLAlchemy reads and writes everywhere else;
* the writes (the transaction's `Changeset`, held by `_writes.PendingWrites`), sent in the
  trip of the next read, or with COMMIT.

A trip runs a list of operations with `run_ops`: in one call on the driver's thread where
aiosqlite lets us queue a function there (its `_execute`, not public but unchanged since
aiosqlite 0.11), otherwise one public call per operation, which is correct, only slower.

Only SQLite transactions take this path; single statements and everything off the hot path
go through SQLAlchemy, on the same connection and so in the same transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, Literal, NoReturn

from sqlalchemy import Dialect, Table

from stagewise._errors import ConcurrentUpdateError
from stagewise._records import RunRecord, StageRecord, with_stages
from stagewise_sql import _rows
from stagewise_sql._rows import Fields
from stagewise_sql._schema import runs as runs_t
from stagewise_sql._schema import stages as stages_t
from stagewise_sql._writes import (
    EXPECTED,
    RUN_UPDATES,
    WRITES,
    PendingWrites,
    TableWrite,
    Values,
)

ENDED = "stagewise_transaction_ended"
"""Set in a pooled connection's `info` when its transaction ended cleanly, so the pool's
reset on check-in (a rollback, one more trip) can be skipped (`_connect`)."""

Mode = Literal["rows", "many", "each"]
Op = tuple[str, Any, Mode]
"""(sql, parameters, mode): "rows" executes once and returns the rows (none for a write);
"many" runs `executemany` over a list of parameter rows; "each" too, and every parameter
row must change exactly one row, or the trip stops there (`StaleWrite`): what it wrote is
rolled back with the transaction, and nothing after it (a COMMIT) runs."""


class StaleWrite(Exception):
    """An "each" operation changed fewer rows than it has parameter rows."""


def _check(mode: Mode, params: Any, changed: int) -> None:
    if mode == "each" and changed != len(params):
        raise StaleWrite(f"{changed} of {len(params)} rows changed")


def _one_trip(conn: sqlite3.Connection, ops: Sequence[Op]) -> list[list[Any]]:
    results: list[list[Any]] = []
    for sql, params, mode in ops:
        if mode == "rows":
            results.append(conn.execute(sql, params).fetchall())
        else:
            _check(mode, params, conn.executemany(sql, params).rowcount)
            results.append([])
    return results


def _queue_of(aio: Any) -> Any:
    """aiosqlite's way to run a function on its thread, where it has one."""
    return getattr(aio, "_execute", None)


TRACERS: list[Callable[[list[str]], None]] = []
"""Called with the statements of each trip before it goes (for counting, `_counting`)."""


async def run_ops(aio: Any, ops: Sequence[Op]) -> list[list[Any]]:
    """Run `ops` in order on the aiosqlite connection `aio`; their rows, in order."""
    for trace in TRACERS:
        trace([sql for sql, _, _ in ops])
    try:
        queue = _queue_of(aio)
        if queue is not None:
            results: list[list[Any]] = await queue(_one_trip, aio._conn, ops)
            return results
        results = []
        for sql, params, mode in ops:  # public calls: one trip each
            if mode == "rows":
                results.append(list(await aio.execute_fetchall(sql, params)))
            else:
                cursor = await aio.executemany(sql, params)
                _check(mode, params, cursor.rowcount)
                results.append([])
        return results
    except ValueError as exc:  # aiosqlite's own, for a connection it has closed
        if "closed" in str(exc) or "no active connection" in str(exc):
            raise sqlite3.ProgrammingError(f"Cannot operate on a closed database: {exc}") from exc
        raise


# --- statements --------------------------------------------------------------------------


def _columns(table: Table) -> str:
    return ", ".join(c.name for c in table.columns)


_IDS = "(SELECT value FROM json_each(?))"
"""A list of ids as one parameter (a JSON array), so each statement has one fixed text."""

_RUNS_BY_IDS = (
    f"SELECT {_columns(runs_t)} FROM {runs_t.name} WHERE run_id IN {_IDS} ORDER BY run_id"
)
_STAGES_OF_RUNS = (
    f"SELECT {_columns(stages_t)} FROM {stages_t.name} WHERE run_id IN {_IDS} "
    "ORDER BY run_id, group_index, stage_id"
)
_RUNS_PENDING = (
    f"SELECT {_columns(runs_t)} FROM {runs_t.name} WHERE status = 'PENDING' "
    "AND (? OR EXISTS (SELECT 1 FROM json_each(?) AS k "
    "WHERE json_extract(k.value, '$[0]') = workflow_id "
    "AND (workflow_version IS NULL OR json_extract(k.value, '$[1]') = workflow_version))) "
    "ORDER BY priority DESC, created_at, run_id LIMIT ?"
)
"""Pending runs, of the given (workflow, version) pairs (a JSON array) unless the first
parameter (any) is true."""


def _params(how: TableWrite) -> tuple[str, ...]:
    """The parameters of one way of writing, in the order its statement takes them."""
    if how.how == "update":
        return (*how.changed, *how.keys, EXPECTED)
    return how.names


def _write_sql(how: TableWrite) -> str:
    table = how.table.name
    if how.how == "delete":
        return f"DELETE FROM {table} WHERE " + " AND ".join(f"{k} = ?" for k in how.keys)
    if how.how == "update":
        sets = ", ".join(f"{n} = ?" for n in how.changed)
        keys = " AND ".join(f"{k} = ?" for k in how.keys)
        return f"UPDATE {table} SET {sets} WHERE {keys} AND version = ?"
    marks = ", ".join("?" for _ in how.names)
    return f"INSERT INTO {table} ({', '.join(how.names)}) VALUES ({marks})" + how.conflict_clause(
        "excluded"
    )


_WRITE_SQL = {how: _write_sql(how) for how in WRITES}


class Codec:
    """Values of a table's columns (`names`, all of them by default) to SQLite's and back,
    with SQLAlchemy's processors for `dialect`; a name that is no column of the table (the
    expected version of an update) passes as it is."""

    __slots__ = ("_decoders", "_encoders", "names")

    def __init__(self, table: Table, dialect: Dialect, names: Sequence[str] = ()) -> None:
        self.names = tuple(names) or tuple(c.name for c in table.columns)
        columns = [table.c.get(n) for n in self.names]
        impls = [None if c is None else c.type.dialect_impl(dialect) for c in columns]
        self._encoders = tuple(None if i is None else i.bind_processor(dialect) for i in impls)
        self._decoders = tuple(
            None if i is None else i.result_processor(dialect, None) for i in impls
        )

    def encode(self, values: Values) -> tuple[Any, ...]:
        return tuple(
            value if encode is None or value is None else encode(value)
            for value, encode in zip(
                map(values.__getitem__, self.names), self._encoders, strict=True
            )
        )

    def decode(self, row: Sequence[Any]) -> Fields:
        # NULL is None for every column type (JSON's none_as_null included): no call.
        return Fields(
            (name, value if decode is None or value is None else decode(value))
            for name, value, decode in zip(self.names, row, self._decoders, strict=True)
        )


class Codecs:
    """The hot path's tables' codecs for one engine's dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.runs = Codec(runs_t, dialect)
        self.stages = Codec(stages_t, dialect)
        self.writes = {how: Codec(how.table, dialect, _params(how)) for how in WRITES}


# --- the path ----------------------------------------------------------------------------


class LitePath:
    """SQLite's hot path on one transaction's aiosqlite connection (see the module
    docstring). `used` turns true with its first trip."""

    __slots__ = ("_codecs", "_info", "_reraise", "aio", "failed", "used", "writes")

    def __init__(
        self,
        aio: Any,
        codecs: Codecs,
        *,
        info: MutableMapping[str, Any],
        reraise: Callable[[Exception], NoReturn],
    ) -> None:
        self.aio = aio
        self.writes = PendingWrites()
        self.used = False
        self.failed: Exception | None = None
        self._codecs = codecs
        self._info = info
        self._reraise = reraise

    async def _trip(self, ops: list[Op]) -> list[list[Any]]:
        """`ops` after the held writes, in one trip; the rows of `ops`."""
        wanted = len(ops)
        taken, updated_runs, _ = self.writes.take()  # (other processes watch the file)
        writes: list[Op] = []
        for how, rows in taken:
            codec = self._codecs.writes[how]
            # A run update must find its row at the expected version: checked before COMMIT.
            mode: Mode = "each" if how is RUN_UPDATES else "many"
            writes.append((_WRITE_SQL[how], [codec.encode(row) for row in rows], mode))
        ops = writes + ops
        if not ops:
            return []
        self.used = True
        try:
            try:
                results = await run_ops(self.aio, ops)
            except StaleWrite:
                raise ConcurrentUpdateError(updated_runs) from None
        except Exception as exc:
            self.failed = self.failed or exc
            self._reraise(exc)
        return results[len(results) - wanted :]

    async def begin(self) -> None:
        await self._trip([("BEGIN IMMEDIATE", (), "rows")])
        self._info.pop(ENDED, None)

    async def flush(self) -> None:
        """Send the held writes now."""
        await self._trip([])

    async def commit(self) -> None:
        await self._trip([("COMMIT", (), "rows")])
        self._info[ENDED] = True

    async def rollback(self) -> None:
        self.writes.take()
        await self._trip([("ROLLBACK", (), "rows")])
        self._info[ENDED] = True

    def _runs(self, rows: list[Any]) -> list[RunRecord]:
        return [_rows.run_from_row(self._codecs.runs.decode(row)) for row in rows]

    def _stages(self, rows: list[Any]) -> list[StageRecord]:
        return [_rows.stage_from_row(self._codecs.stages.decode(row)) for row in rows]

    async def load(
        self, run_ids: Sequence[str], *, skip_locked: bool = False
    ) -> list[tuple[RunRecord, list[StageRecord]]]:
        # The transaction holds SQLite's write lock (BEGIN IMMEDIATE): reading is locking,
        # and nobody else holds a run.
        ids = (json.dumps(list(run_ids)),)
        runs, stages = await self._trip(
            [(_RUNS_BY_IDS, ids, "rows"), (_STAGES_OF_RUNS, ids, "rows")]
        )
        return with_stages(self._runs(runs), self._stages(stages))

    async def claim_pending(
        self, limit: int, *, workflows: Sequence[tuple[str, str]] | None = None
    ) -> list[RunRecord]:
        params = (workflows is None, json.dumps(list(workflows or ())), limit)
        (rows,) = await self._trip([(_RUNS_PENDING, params, "rows")])
        return self._runs(rows)
