"""Counting what the database is sent: transactions committed, statements and round trips.

For the round-trip budget test and the benchmarks. Statements reach the database two ways:
through SQLAlchemy (seen by its engine events) and on the driver directly (the hot path:
on PostgreSQL seen by asyncpg's query loggers, which SQLAlchemy's own prepared-statement
executions do not trigger, so nothing is counted twice; on SQLite by `_lite.TRACERS`).
BEGIN and ROLLBACK are not statements here; a COMMIT, or an autocommitted single
statement's commit, is a transaction. asyncpg's own type introspection (once per connection
and array type, the first time a statement uses it) is counted apart, in `introspection`.
asyncpg tells its query loggers of a statement one event-loop turn after it completed:
`await asyncio.sleep(0)` before reading counts taken in the middle of a transaction.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from stagewise_sql._lite import TRACERS

_INTROSPECTION = re.compile(r"typeinfo_tree|current_setting\('jit'\)|set_config\('jit'")


@dataclass
class Counts:
    commits: int = 0
    statements: int = 0
    shapes: Counter[str] = field(default_factory=Counter)
    """Statements by their first words."""
    introspection: int = 0
    trips: int = 0
    """Round trips to the driver, BEGIN and COMMIT included: a statement each on PostgreSQL
    and through SQLAlchemy; on SQLite's hot path, one per call on the driver's thread, which
    carries several statements."""

    def statement(self, text: str) -> None:
        self.statements += 1
        self.shapes[" ".join(text.split()[:4])[:60]] += 1


@contextmanager
def counting(engine: Engine | None = None) -> Iterator[Counts]:
    """Count what `engine` (a sync engine; every engine when None) sends while inside."""
    counts = Counts()
    hooked: list[Any] = []

    def on_commit(_conn: Any) -> None:
        counts.commits += 1

    def on_statement(*args: Any) -> None:
        counts.trips += 1
        counts.statement(args[2])

    def on_driver_query(record: Any) -> None:
        word = record.query.lstrip()[:8].upper()
        if _INTROSPECTION.search(record.query):
            counts.introspection += 1
            return
        counts.trips += 1
        if word.startswith("COMMIT"):
            counts.commits += 1
        elif not word.startswith(("BEGIN", "ROLLBACK")):
            counts.statement(record.query)

    def on_lite(statements: list[str]) -> None:  # a trip on SQLite's hot path (`_lite`)
        counts.trips += 1
        for sql in statements:
            word = sql[:8].upper()
            if word.startswith("COMMIT"):
                counts.commits += 1
            elif not word.startswith(("BEGIN", "ROLLBACK")):
                counts.statement(sql)

    def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        driver = getattr(dbapi_conn, "driver_connection", None)
        if driver is not None and hasattr(driver, "add_query_logger"):
            driver.add_query_logger(on_driver_query)
            hooked.append(driver)

    events_on: Any = Engine if engine is None else engine
    pool_on: Any = Pool if engine is None else engine.pool
    event.listen(events_on, "commit", on_commit)
    event.listen(events_on, "before_cursor_execute", on_statement)
    event.listen(pool_on, "checkout", on_checkout)
    TRACERS.append(on_lite)
    try:
        yield counts
    finally:
        event.remove(events_on, "commit", on_commit)
        event.remove(events_on, "before_cursor_execute", on_statement)
        event.remove(pool_on, "checkout", on_checkout)
        TRACERS.remove(on_lite)
        for driver in hooked:
            driver.remove_query_logger(on_driver_query)
