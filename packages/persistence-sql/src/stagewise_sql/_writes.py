"""A transaction's changeset, held to go out together (PostgreSQL: one statement, `_pg`;
SQLite: one call on the driver's thread, `_lite`).

The kernel hands each transaction's writes over as one `Changeset` (`Transaction.apply`).
`PendingWrites` holds it and `take` turns it into rows per `TableWrite`, in a fixed order:
new runs inserted, changed runs updated where the stored row is still at the expected
version, stage rows deleted and upserted, events, deliveries, log lines and idempotency
keys inserted, signals and published values upserted, stream items inserted.

Holding the writes changes nothing a caller can see, provided every other statement of the
transaction sends them first (`_engine`): reads see the writes, the order of effects is
kept, and an error (a duplicate key, a stale version) still surfaces inside the
transaction, which then rolls back whole. Foreign keys to runs and events are DEFERRABLE,
checked at commit, so the tables may be written in any order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Table

from stagewise._errors import ConcurrentUpdateError
from stagewise._records import Changeset, RunWrite
from stagewise_sql import _rows
from stagewise_sql._schema import deliveries as deliveries_t
from stagewise_sql._schema import events as events_t
from stagewise_sql._schema import idempotency as idempotency_t
from stagewise_sql._schema import logs as logs_t
from stagewise_sql._schema import run_values as run_values_t
from stagewise_sql._schema import runs as runs_t
from stagewise_sql._schema import signals as signals_t
from stagewise_sql._schema import stages as stages_t
from stagewise_sql._schema import stream_items as stream_items_t

Values = dict[str, Any]

EXPECTED = "expected_version"
"""The parameter of a run update that names the version the row must still be at."""


@dataclass(frozen=True)
class TableWrite:
    """How the rows of one table are written: inserted, upserted on the primary key,
    updated where the stored row is at the expected version (`EXPECTED`), or deleted by
    primary key."""

    table: Table
    how: Literal["insert", "upsert", "update", "delete"]
    names: tuple[str, ...] = field(init=False)
    """The columns written (every column but a generated key; the key for a delete)."""
    keys: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        keys = tuple(c.name for c in self.table.primary_key.columns)
        generated = {c.name for c in self.table.columns if c.autoincrement is True}
        names = (
            keys
            if self.how == "delete"
            else tuple(c.name for c in self.table.columns if c.name not in generated)
        )
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "keys", keys)

    @property
    def changed(self) -> tuple[str, ...]:
        """The columns an upsert or an update sets."""
        return tuple(n for n in self.names if n not in self.keys)

    def conflict_clause(self, excluded: str) -> str:
        """` ON CONFLICT (keys) DO UPDATE SET ...` for an upsert (`excluded` is how the
        dialect spells the proposed row), else ``."""
        if self.how != "upsert":
            return ""
        sets = ", ".join(f"{n} = {excluded}.{n}" for n in self.changed)
        return f" ON CONFLICT ({', '.join(self.keys)}) DO UPDATE SET {sets}"


NEW_RUNS = TableWrite(runs_t, "insert")
RUN_UPDATES = TableWrite(runs_t, "update")
DELETED_STAGES = TableWrite(stages_t, "delete")
STAGES = TableWrite(stages_t, "upsert")
EVENTS = TableWrite(events_t, "insert")
DELIVERIES = TableWrite(deliveries_t, "insert")
LOGS = TableWrite(logs_t, "insert")
KEYS = TableWrite(idempotency_t, "insert")
SIGNALS = TableWrite(signals_t, "upsert")
VALUES = TableWrite(run_values_t, "upsert")
STREAM_ITEMS = TableWrite(stream_items_t, "insert")
WRITES = (
    NEW_RUNS,
    RUN_UPDATES,
    DELETED_STAGES,
    STAGES,
    EVENTS,
    DELIVERIES,
    LOGS,
    KEYS,
    SIGNALS,
    VALUES,
    STREAM_ITEMS,
)
"""Every way a changeset writes, in the order the rows go out."""


def _update_values(write: RunWrite) -> Values:
    values = _rows.run_values(write.run)
    values[EXPECTED] = write.expected_version
    return values


def _deleted(key: tuple[str, str]) -> Values:
    return {"run_id": key[0], "stage_id": key[1]}


class PendingWrites:
    """The changeset of one transaction not yet sent (see the module docstring)."""

    __slots__ = ("_changes",)

    def __init__(self) -> None:
        self._changes: Changeset | None = None

    def __bool__(self) -> bool:
        return self._changes is not None

    def hold(self, changes: Changeset) -> bool:
        """Hold `changes` to send later; False when a changeset is already held (the
        caller sends that one first: changesets go out in the order applied)."""
        if self._changes is not None:
            return False
        if changes:
            self._changes = changes
        return True

    def take(self) -> tuple[list[tuple[TableWrite, list[Values]]], list[str], list[str]]:
        """The held changeset as column values per way of writing (those with rows only,
        in `WRITES` order), the ids of the runs updated, and those of the runs a reader in
        another process may wait on (`changed_runs`); nothing is held after."""
        changes, self._changes = self._changes, None
        if changes is None:
            return [], [], []
        collected: tuple[tuple[TableWrite, Sequence[Any], Callable[[Any], Values]], ...] = (
            (NEW_RUNS, changes.new_runs, _rows.run_values),
            (RUN_UPDATES, changes.runs, _update_values),
            (DELETED_STAGES, changes.deleted_stages, _deleted),
            (STAGES, changes.stages, _rows.stage_values),
            (EVENTS, changes.events, _rows.event_values),
            (DELIVERIES, changes.deliveries, _rows.delivery_values),
            (LOGS, changes.logs, _rows.log_values),
            (KEYS, changes.idempotency, _rows.idempotency_values),
            (SIGNALS, changes.signals, _rows.signal_values),
            (VALUES, changes.values, _rows.value_values),
            (STREAM_ITEMS, changes.stream_items, _rows.stream_item_values),
        )
        rows = [
            (how, [values(r) for r in records]) for how, records, values in collected if records
        ]
        return rows, [w.run.run_id for w in changes.runs], changed_runs(changes)


def changed_runs(changes: Changeset) -> list[str]:
    """The runs whose change a waiting reader wants to hear of (`ChangeFeed`): a value
    published, a stream item written, the run ended."""
    ids = {v.run_id for v in changes.values} | {i.run_id for i in changes.stream_items}
    ids.update(w.run.run_id for w in changes.runs if w.run.status.is_terminal)
    return sorted(ids)


def check_updated(expected: list[str], updated: int) -> None:
    """Every run update must have found its row at the expected version."""
    if updated != len(expected):
        raise ConcurrentUpdateError(expected)
