"""A transaction's writes, collected to go out together (PostgreSQL: one statement, `_pg`;
SQLite: one call on the driver's thread, `_lite`).

The hot path writes the same five kinds of rows in every transaction: runs inserted, runs
saved, stages saved, events and their deliveries appended. `Writes` gathers them, merging
keys in memory (a run inserted then saved is one insert of its last state; a row saved
twice is written once), and `take` hands them over as rows per `Part`, in a fixed order.

Deferring a write changes nothing a caller can see, provided every other statement of the
transaction sends what is collected first (`Link`): reads see the writes, the order of
effects is kept, and an error (a duplicate key) still surfaces inside the transaction, which
then rolls back as a whole. Foreign keys to runs and events are DEFERRABLE, checked at
commit, so the parts may go in any order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table

from stagewise._records import Delivery, EventRecord, RunRecord, StageRecord
from stagewise_sql import _rows
from stagewise_sql._schema import deliveries as deliveries_t
from stagewise_sql._schema import events as events_t
from stagewise_sql._schema import runs as runs_t
from stagewise_sql._schema import stages as stages_t

Values = dict[str, Any]


@dataclass(frozen=True)
class Part:
    """The rows of one table written one way: inserted, or upserted on the primary key."""

    table: Table
    upsert: bool
    names: tuple[str, ...] = field(init=False)
    keys: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(c.name for c in self.table.columns))
        object.__setattr__(self, "keys", tuple(c.name for c in self.table.primary_key.columns))

    def conflict_clause(self, excluded: str) -> str:
        """` ON CONFLICT (keys) DO UPDATE SET ...` for an upsert (`excluded` is how the
        dialect spells the proposed row), else ``."""
        if not self.upsert:
            return ""
        sets = ", ".join(f"{n} = {excluded}.{n}" for n in self.names if n not in self.keys)
        return f" ON CONFLICT ({', '.join(self.keys)}) DO UPDATE SET {sets}"


NEW_RUNS = Part(runs_t, upsert=False)
SAVED_RUNS = Part(runs_t, upsert=True)
STAGES = Part(stages_t, upsert=True)
EVENTS = Part(events_t, upsert=False)
DELIVERIES = Part(deliveries_t, upsert=False)
PARTS = (NEW_RUNS, SAVED_RUNS, STAGES, EVENTS, DELIVERIES)


class Writes:
    """The writes of one transaction, not yet sent (see the module docstring)."""

    __slots__ = ("_deliveries", "_events", "_new_runs", "_saved_runs", "_stages")

    def __init__(self) -> None:
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

    def take(self) -> list[tuple[Part, list[Values]]]:
        """Everything collected, as column values per part (parts with rows only, in
        `PARTS` order); the collection is emptied."""
        collected: tuple[tuple[Part, Sequence[Any], Callable[[Any], Values]], ...] = (
            (NEW_RUNS, list(self._new_runs.values()), _rows.run_values),
            (SAVED_RUNS, list(self._saved_runs.values()), _rows.run_values),
            (STAGES, list(self._stages.values()), _rows.stage_values),
            (EVENTS, self._events, _rows.event_values),
            (DELIVERIES, self._deliveries, _rows.delivery_values),
        )
        self._new_runs, self._saved_runs, self._stages = {}, {}, {}
        self._events, self._deliveries = [], []
        return [
            (part, [values(r) for r in records]) for part, records, values in collected if records
        ]
