"""Statements shared by the stores, built once (SQLAlchemy caches their compiled form)."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import BindParameter, Insert, Table, bindparam
from sqlalchemy.dialects import postgresql, sqlite

from stagewise._errors import PersistenceError
from stagewise_sql._connect import Dialect
from stagewise_sql._engine import Database, DriverPath, UnitConnection
from stagewise_sql._schema import UtcDateTime


def time_param(name: str, value: datetime) -> BindParameter[datetime]:
    """A bound time, typed so it is stored and compared like the time columns."""
    return bindparam(name, value, type_=UtcDateTime())


def _insert(table: Table, dialect: Dialect) -> Any:
    module: Any = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table)


@cache
def insert_ignore(table: Table, dialect: Dialect) -> Insert:
    """`INSERT ... ON CONFLICT DO NOTHING`: rowcount says whether the row went in."""
    stmt: Insert = _insert(table, dialect).on_conflict_do_nothing()
    return stmt


@cache
def upsert(table: Table, dialect: Dialect) -> Insert:
    """`INSERT ... ON CONFLICT (primary key) DO UPDATE` every other column.

    "Save" in the ports writes the whole record, like the reference's `table[key] = record`
    (which also inserts a record that was not there).
    """
    stmt = _insert(table, dialect)
    keys = [c.name for c in table.primary_key.columns]
    updates = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    result: Insert = stmt.on_conflict_do_update(index_elements=keys, set_=updates)
    return result


class Store:
    """A store of one unit of work: runs its statements on the unit's connection."""

    __slots__ = ("_db", "_dialect", "_link")

    def __init__(self, db: Database, link: UnitConnection) -> None:
        self._db = db
        self._dialect = db.dialect
        self._link = link

    @property
    def path(self) -> DriverPath:
        """The transaction's hot path (every unit of work of the `Persistence` port is a
        transaction; single statements, which have none, do not use the stores' hot reads
        and writes)."""
        if self._link.path is None:
            raise PersistenceError("the hot path is used outside a transaction")
        return self._link.path
