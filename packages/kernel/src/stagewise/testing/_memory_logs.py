"""Reading log lines in memory (`LogStore`): a store of `InMemoryPersistence`'s
transactions, kept apart so that its module stays small."""

from __future__ import annotations

from typing import Any, Protocol

from stagewise._records import LogLine, LogRecord


class _Tables(Protocol):
    def read(self, table: str) -> dict[Any, Any]: ...


class MemoryLogs:
    """`LogStore` over a memory transaction's `logs` table (line id -> record; ids are
    handed out in the order lines are written, one counter for every run)."""

    def __init__(self, tx: _Tables) -> None:
        self._tx = tx

    async def for_run(
        self, run_id: str, *, after: int = 0, stage_id: str | None = None, limit: int = 1000
    ) -> list[LogLine]:
        table: dict[int, LogRecord] = self._tx.read("logs")
        ids = sorted(
            i
            for i, r in table.items()
            if i > after and r.run_id == run_id and (stage_id is None or r.stage_id == stage_id)
        )
        return [table[i].line(i) for i in ids[:limit]]
