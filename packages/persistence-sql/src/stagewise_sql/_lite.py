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
* the reads of a step together (`lock_with_stages`: the runs and their stages), with fixed
  statement texts (sqlite3 caches each one prepared per connection) and rows decoded by the
  column types' own SQLAlchemy processors, so values read and written here are the very
  values SQLAlchemy reads and writes everywhere else;
* the writes, collected (`_writes.Writes`) and sent in the trip of the next read, or with
  COMMIT.

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
from typing import Any, NoReturn

from sqlalchemy import Dialect, Table

from stagewise._records import RunRecord, StageRecord, with_stages
from stagewise_sql import _rows
from stagewise_sql._rows import Fields
from stagewise_sql._schema import runs as runs_t
from stagewise_sql._schema import stages as stages_t
from stagewise_sql._writes import PARTS, Part, Values, Writes

ENDED = "stagewise_transaction_ended"
"""Set in a pooled connection's `info` when its transaction ended cleanly, so the pool's
reset on check-in (a rollback, one more trip) can be skipped (`_connect`)."""

Op = tuple[str, Any, bool]
"""(sql, parameters, many): `many` runs `executemany` over a list of parameter rows; any
other operation returns its rows (none for a write)."""


def _one_trip(conn: sqlite3.Connection, ops: Sequence[Op]) -> list[list[Any]]:
    results: list[list[Any]] = []
    for sql, params, many in ops:
        if many:
            conn.executemany(sql, params)
            results.append([])
        else:
            results.append(conn.execute(sql, params).fetchall())
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
        for sql, params, many in ops:  # public calls: one trip each
            if many:
                await aio.executemany(sql, params)
                results.append([])
            else:
                results.append(list(await aio.execute_fetchall(sql, params)))
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
    "ORDER BY priority DESC, created_at, run_id LIMIT ?"
)


def _insert(part: Part) -> str:
    marks = ", ".join("?" for _ in part.names)
    return (
        f"INSERT INTO {part.table.name} ({', '.join(part.names)}) VALUES ({marks})"
        + part.conflict_clause("excluded")
    )


_INSERTS = {part: _insert(part) for part in PARTS}


class Codec:
    """A table's values to SQLite's and back, with SQLAlchemy's processors for `dialect`."""

    __slots__ = ("_decoders", "_encoders", "names")

    def __init__(self, table: Table, dialect: Dialect) -> None:
        self.names = tuple(c.name for c in table.columns)
        impls = [c.type.dialect_impl(dialect) for c in table.columns]
        self._encoders = tuple(impl.bind_processor(dialect) for impl in impls)
        self._decoders = tuple(impl.result_processor(dialect, None) for impl in impls)

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
        self.parts = {part: Codec(part.table, dialect) for part in PARTS}


# --- the path ----------------------------------------------------------------------------


class LitePath:
    """SQLite's hot path on one transaction's aiosqlite connection (see the module
    docstring). `used` turns true with its first trip."""

    __slots__ = ("_codecs", "_info", "_reraise", "aio", "used", "writes")

    def __init__(
        self,
        aio: Any,
        codecs: Codecs,
        *,
        info: MutableMapping[str, Any],
        reraise: Callable[[Exception], NoReturn],
    ) -> None:
        self.aio = aio
        self.writes = Writes()
        self.used = False
        self._codecs = codecs
        self._info = info
        self._reraise = reraise

    async def _trip(self, ops: list[Op]) -> list[list[Any]]:
        """`ops` after the collected writes, in one trip; the rows of `ops`."""
        wanted = len(ops)
        if self.writes:
            ops = self._write_ops() + ops
        if not ops:
            return []
        self.used = True
        try:
            results = await run_ops(self.aio, ops)
        except Exception as exc:
            self._reraise(exc)
        return results[len(results) - wanted :]

    def _write_ops(self) -> list[Op]:
        ops: list[Op] = []
        for part, rows in self.writes.take():
            codec = self._codecs.parts[part]
            ops.append((_INSERTS[part], [codec.encode(row) for row in rows], True))
        return ops

    async def begin(self) -> None:
        await self._trip([("BEGIN IMMEDIATE", (), False)])
        self._info.pop(ENDED, None)

    async def flush(self) -> None:
        """Send the collected writes now."""
        await self._trip([])

    async def commit(self) -> None:
        await self._trip([("COMMIT", (), False)])
        self._info[ENDED] = True

    async def rollback(self) -> None:
        self.writes.take()
        await self._trip([("ROLLBACK", (), False)])
        self._info[ENDED] = True

    def _runs(self, rows: list[Any]) -> list[RunRecord]:
        return [_rows.run_from_row(self._codecs.runs.decode(row)) for row in rows]

    def _stages(self, rows: list[Any]) -> list[StageRecord]:
        return [_rows.stage_from_row(self._codecs.stages.decode(row)) for row in rows]

    async def lock_many(self, run_ids: Sequence[str]) -> list[RunRecord]:
        # The transaction holds SQLite's write lock (BEGIN IMMEDIATE): reading is locking.
        (rows,) = await self._trip([(_RUNS_BY_IDS, (json.dumps(list(run_ids)),), False)])
        return self._runs(rows)

    async def for_runs(self, run_ids: Sequence[str]) -> list[StageRecord]:
        (rows,) = await self._trip([(_STAGES_OF_RUNS, (json.dumps(list(run_ids)),), False)])
        return self._stages(rows)

    async def lock_with_stages(
        self, run_ids: Sequence[str]
    ) -> list[tuple[RunRecord, list[StageRecord]]]:
        ids = (json.dumps(list(run_ids)),)
        runs, stages = await self._trip([(_RUNS_BY_IDS, ids, False), (_STAGES_OF_RUNS, ids, False)])
        return with_stages(self._runs(runs), self._stages(stages))

    async def claim_pending(self, limit: int) -> list[RunRecord]:
        (rows,) = await self._trip([(_RUNS_PENDING, (limit,), False)])
        return self._runs(rows)
