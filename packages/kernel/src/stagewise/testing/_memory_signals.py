"""A run's mailbox (`SignalStore`), the values it published (`ValueStore`) and its
streams (`StreamStore`) in memory: stores of `InMemoryPersistence`'s transactions, kept
apart so that its module stays small."""

from __future__ import annotations

from typing import Any, Protocol

from stagewise._records import RunValueRecord, SignalRecord, StreamItemRecord


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


class MemoryStreams:
    """`StreamStore` over a memory transaction's `streams` table ((run_id, key, offset) ->
    item)."""

    def __init__(self, tx: _Tables) -> None:
        self._tx = tx

    async def tail(self, run_id: str, key: str) -> StreamItemRecord | None:
        items = self._items(run_id, key)
        return items[-1] if items else None

    async def read(
        self, run_id: str, key: str, *, offset: int = 0, limit: int = 1000
    ) -> list[StreamItemRecord]:
        return [i for i in self._items(run_id, key) if i.offset >= offset][:limit]

    def _items(self, run_id: str, key: str) -> list[StreamItemRecord]:
        table: dict[tuple[str, str, int], StreamItemRecord] = self._tx.read("streams")
        return [table[k] for k in sorted(k for k in table if k[:2] == (run_id, key))]
