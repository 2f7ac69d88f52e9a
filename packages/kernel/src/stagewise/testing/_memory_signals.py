"""A run's mailbox (`SignalStore`) and the values it published (`ValueStore`) in memory:
stores of `InMemoryPersistence`'s transactions, kept apart so that its module stays
small."""

from __future__ import annotations

from typing import Any, Protocol

from stagewise._records import RunValueRecord, SignalRecord


class _Tables(Protocol):
    def read(self, table: str) -> dict[Any, Any]: ...


class MemorySignals:
    """`SignalStore` over a memory transaction's `signals` table ((run_id, seq) -> row)."""

    def __init__(self, tx: _Tables) -> None:
        self._tx = tx

    async def for_run(self, run_id: str) -> list[SignalRecord]:
        table: dict[tuple[str, int], SignalRecord] = self._tx.read("signals")
        return [table[k] for k in sorted(k for k in table if k[0] == run_id)]

    async def pending(self, run_id: str, topic: str) -> list[SignalRecord]:
        rows = await self.for_run(run_id)
        return [s for s in rows if s.topic == topic and s.consumed_by is None]

    async def by_key(self, run_id: str, idempotency_key: str) -> SignalRecord | None:
        rows = await self.for_run(run_id)
        return next((s for s in rows if s.idempotency_key == idempotency_key), None)


class MemoryValues:
    """`ValueStore` over a memory transaction's `values` table ((run_id, key) -> row)."""

    def __init__(self, tx: _Tables) -> None:
        self._tx = tx

    async def get(self, run_id: str, key: str) -> RunValueRecord | None:
        table: dict[tuple[str, str], RunValueRecord] = self._tx.read("values")
        return table.get((run_id, key))

    async def for_run(self, run_id: str) -> list[RunValueRecord]:
        table: dict[tuple[str, str], RunValueRecord] = self._tx.read("values")
        return [table[k] for k in sorted(k for k in table if k[0] == run_id)]
