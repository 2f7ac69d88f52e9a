"""The outbox in memory (`OutboxStore`): a store of `InMemoryPersistence`'s transactions,
kept apart so that its module stays small. Deliveries are claimed per (consumer, run) in
`seq` order: a run's events reach each consumer in order, one claim at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Protocol

from stagewise._records import ClaimedDelivery, Delivery, EventRecord


class _Tables(Protocol):
    def read(self, table: str) -> dict[Any, Any]: ...

    def write(self, table: str) -> dict[Any, Any]: ...


class MemoryOutbox:
    """`OutboxStore` over a memory transaction's `events` and `deliveries` tables."""

    def __init__(self, tx: _Tables) -> None:
        self._tx = tx

    async def claim(
        self, *, now: datetime, limit: int, claimer: str, claim_until: datetime
    ) -> list[ClaimedDelivery]:
        groups: dict[tuple[str, str], list[Delivery]] = {}
        for d in self._tx.read("deliveries").values():
            if d.status == "pending":
                groups.setdefault((d.consumer, d.run_id), []).append(d)
        eligible: list[Delivery] = []
        for key in sorted(groups):
            group = sorted(groups[key], key=lambda d: d.seq)
            head = group[0]
            if head.next_attempt_at is not None and head.next_attempt_at > now:
                continue
            if any(d.claimed_until is not None and d.claimed_until > now for d in group):
                continue
            eligible.extend(group)
            if len(eligible) >= limit:
                break
        eligible = eligible[:limit]
        table = self._tx.write("deliveries")
        events = self._tx.read("events")
        claimed = []
        for d in eligible:
            d = replace(d, claimed_by=claimer, claimed_until=claim_until)
            table[(d.event_id, d.consumer)] = d
            claimed.append(ClaimedDelivery(delivery=d, event=events[d.event_id]))
        return claimed

    async def update(self, deliveries: Sequence[Delivery]) -> None:
        table = self._tx.write("deliveries")
        for d in deliveries:
            table[(d.event_id, d.consumer)] = d

    async def replay_dead(
        self, *, consumer: str | None, event_ids: Sequence[str] | None, now: datetime
    ) -> int:
        table = self._tx.write("deliveries")
        wanted = set(event_ids) if event_ids is not None else None
        count = 0
        for key, d in list(table.items()):
            if d.status != "dead" or (consumer is not None and d.consumer != consumer):
                continue
            if wanted is not None and d.event_id not in wanted:
                continue
            table[key] = replace(
                d,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                claimed_until=None,
                claimed_by=None,
            )
            count += 1
        return count

    async def events(self, run_id: str, *, after_seq: int = 0) -> list[EventRecord]:
        rows = [
            e for e in self._tx.read("events").values() if e.run_id == run_id and e.seq > after_seq
        ]
        rows.sort(key=lambda e: e.seq)
        return rows
