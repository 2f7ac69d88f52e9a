"""The outbox store: claiming events' per-consumer deliveries, and the dead-letter queue.

Events and their deliveries are written with the changes that caused them (a `Changeset`,
see `_writes`); from here they are claimed, marked delivered or dead, and replayed.

Claiming works on (consumer, run) groups: a group's pending deliveries go out strictly in
`seq` order, so a group is claimed whole (up to `limit`) or not at all. It takes three
statements:

1. Find the heads (earliest pending delivery) of eligible groups: due, and no pending
   delivery of the group is claimed. On PostgreSQL the heads are locked
   `FOR UPDATE SKIP LOCKED`: a concurrent claimer skips a group whose head we hold, and
   one that read an older snapshot re-checks the head row when it gets to it (READ
   COMMITTED re-evaluates a locked row's own conditions), so it sees our claim and skips
   it too. No group is ever claimed twice.
2. Read the pending deliveries of those groups with their events, in
   (consumer, run_id, seq) order, up to `limit` rows (the last group may be cut short,
   exactly as in the in-memory reference; its claimed head still blocks the rest).
3. Stamp them with the claimer and `claim_until`.

On SQLite the transaction holds the database's write lock from BEGIN, so the same
statements are simply serialized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Row,
    and_,
    bindparam,
    or_,
    select,
    tuple_,
    update,
)

from stagewise._records import ClaimedDelivery, Delivery, EventRecord
from stagewise_sql import _rows
from stagewise_sql._schema import deliveries as deliveries_t
from stagewise_sql._schema import events as events_t
from stagewise_sql._statements import Store, time_param, upsert

_EVENT_COLUMNS = (
    events_t.c.run_id.label("e_run_id"),
    events_t.c.seq.label("e_seq"),
    events_t.c.type.label("e_type"),
    events_t.c.occurred_at.label("e_occurred_at"),
    events_t.c.payload.label("e_payload"),
)
_WITH_EVENTS = deliveries_t.join(events_t, events_t.c.event_id == deliveries_t.c.event_id)

_EVENTS_AFTER = (
    select(events_t)
    .where(events_t.c.run_id == bindparam("run_id"), events_t.c.seq > bindparam("after_seq"))
    .order_by(events_t.c.seq)
)


def _claimed(row: Row[Any], delivery: Delivery | None = None) -> ClaimedDelivery:
    event = EventRecord(
        event_id=row.event_id,
        run_id=row.e_run_id,
        seq=row.e_seq,
        type=row.e_type,
        occurred_at=row.e_occurred_at,
        payload=row.e_payload,
    )
    return ClaimedDelivery(delivery=delivery or _rows.delivery_from_row(row), event=event)


class SqlOutboxStore(Store):
    async def claim(
        self, *, now: datetime, limit: int, claimer: str, claim_until: datetime
    ) -> list[ClaimedDelivery]:
        if limit <= 0:
            return []
        groups = await self._eligible_heads(now, limit)
        if not groups:
            return []
        d = deliveries_t
        rows = list(
            await self._link.execute(
                select(d, *_EVENT_COLUMNS)
                .select_from(_WITH_EVENTS)
                .where(d.c.status == "pending", tuple_(d.c.consumer, d.c.run_id).in_(groups))
                .order_by(d.c.consumer, d.c.run_id, d.c.seq)
                .limit(limit)
            )
        )
        if not rows:
            return []
        await self._link.execute(
            update(d)
            .where(tuple_(d.c.event_id, d.c.consumer).in_([(r.event_id, r.consumer) for r in rows]))
            .values(claimed_by=claimer, claimed_until=time_param("claim_until", claim_until))
        )
        return [
            _claimed(
                row,
                replace(
                    _rows.delivery_from_row(row), claimed_by=claimer, claimed_until=claim_until
                ),
            )
            for row in rows
        ]

    async def _eligible_heads(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        t = time_param("now", now)
        d, p, c = deliveries_t.alias("d"), deliveries_t.alias("p"), deliveries_t.alias("c")
        same_group = and_(p.c.consumer == d.c.consumer, p.c.run_id == d.c.run_id)
        earlier_pending = (
            select(p.c.seq).where(same_group, p.c.status == "pending", p.c.seq < d.c.seq).exists()
        )
        claimed = (
            select(c.c.seq)
            .where(
                c.c.consumer == d.c.consumer,
                c.c.run_id == d.c.run_id,
                c.c.status == "pending",
                c.c.claimed_until > t,
            )
            .exists()
        )
        stmt = (
            select(d.c.consumer, d.c.run_id)
            .where(
                d.c.status == "pending",
                or_(d.c.next_attempt_at.is_(None), d.c.next_attempt_at <= t),
                # Redundant with `claimed`, but it is what PostgreSQL re-checks on the
                # head row itself after another claimer committed (see the docstring).
                or_(d.c.claimed_until.is_(None), d.c.claimed_until <= t),
                ~earlier_pending,
                ~claimed,
            )
            .order_by(d.c.consumer, d.c.run_id)
            .limit(limit)
            .with_for_update(of=d, skip_locked=True)
        )
        return [(row.consumer, row.run_id) for row in await self._link.execute(stmt)]

    async def update(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            values = [_rows.delivery_values(d) for d in deliveries]
            await self._link.execute(upsert(deliveries_t, self._dialect), values)

    async def replay_dead(
        self, *, consumer: str | None, event_ids: Sequence[str] | None, now: datetime
    ) -> int:
        d = deliveries_t
        stmt = update(d).where(d.c.status == "dead")
        if consumer is not None:
            stmt = stmt.where(d.c.consumer == consumer)
        if event_ids is not None:
            stmt = stmt.where(d.c.event_id.in_(list(event_ids)))
        stmt = stmt.values(
            status="pending",
            attempts=0,
            next_attempt_at=time_param("now", now),
            claimed_until=None,
            claimed_by=None,
        )
        return (await self._link.execute(stmt)).rowcount

    async def events(self, run_id: str, *, after_seq: int = 0) -> list[EventRecord]:
        result = await self._link.execute(_EVENTS_AFTER, {"run_id": run_id, "after_seq": after_seq})
        return [_rows.event_from_row(row) for row in result]
