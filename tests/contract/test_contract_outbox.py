"""The outbox, idempotency keys and logs, on every backend."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stagewise._errors import DuplicateRecordError
from stagewise._records import Changeset, ClaimedDelivery, Delivery, EventRecord
from stagewise._states import RunStatus
from tests.conftest import Adapters
from tests.contract.factories import (
    assert_aware,
    at,
    dead_letters,
    delivery,
    event,
    events_of,
    idem,
    log,
    logs_of,
    run,
)


async def append(backend: Adapters, evs: list[EventRecord], ds: list[Delivery]) -> None:
    async with backend.persistence.transaction() as tx:
        missing = [
            run(run_id, status=RunStatus.RUNNING)
            for run_id in dict.fromkeys(e.run_id for e in evs)
            if await tx.runs.get(run_id) is None
        ]
        await tx.apply(Changeset(new_runs=tuple(missing), events=tuple(evs), deliveries=tuple(ds)))


async def claim(
    backend: Adapters, now: float, limit: int = 100, claimer: str = "c1", until: float = 30
) -> list[ClaimedDelivery]:
    async with backend.persistence.transaction() as tx:
        return await tx.outbox.claim(
            now=at(now), limit=limit, claimer=claimer, claim_until=at(now + until)
        )


def keys(claimed: list[ClaimedDelivery]) -> list[tuple[str, str, int]]:
    return [(c.delivery.consumer, c.delivery.run_id, c.delivery.seq) for c in claimed]


async def update(backend: Adapters, *items: Delivery) -> None:
    async with backend.persistence.transaction() as tx:
        await tx.outbox.update(list(items))


# --- events ------------------------------------------------------------------------------


async def test_events_come_back_in_seq_order_after_a_given_seq(backend: Adapters) -> None:
    await append(backend, [event("r1", 2), event("r1", 1), event("r1", 3), event("r2", 1)], [])

    async with backend.persistence.transaction() as tx:
        every = await tx.outbox.events("r1")
        after = await tx.outbox.events("r1", after_seq=1)
        none = await tx.outbox.events("r3")

    assert every == [event("r1", 1), event("r1", 2), event("r1", 3)]
    assert [e.seq for e in after] == [2, 3]
    assert none == []
    assert_aware(*(e.occurred_at for e in every))


async def test_append_stores_every_field_and_refuses_an_event_id_twice(
    backend: Adapters,
) -> None:
    ev = replace(event("r1", 1), payload={"text": 'é \\ "quoted"', "n": [1, None, {"x": 2.5}]})
    dead = delivery(
        ev,
        "plugin:a",
        status="dead",
        attempts=3,
        next_attempt_at=at(9),
        claimed_by="c9",
        claimed_until=at(10),
        last_error="gave up",
    )
    await append(backend, [ev], [delivery(ev), dead])

    async with backend.persistence.transaction() as tx:
        assert await tx.outbox.events("r1") == [ev]
    [got] = await dead_letters(backend)
    assert got.delivery == dead
    assert got.event == ev
    assert_aware(got.delivery.next_attempt_at, got.delivery.claimed_until)

    with pytest.raises(DuplicateRecordError):
        await append(backend, [ev], [delivery(ev, "plugin:b")])
    async with backend.persistence.transaction() as tx:
        assert len(await tx.outbox.events("r1")) == 1


# --- claims ------------------------------------------------------------------------------


async def test_claim_takes_whole_groups_in_consumer_run_seq_order(backend: Adapters) -> None:
    evs = [*events_of("r2", [1, 2]), *events_of("r1", [1, 2, 3])]
    ds = [delivery(e, c) for e in evs for c in ("sink", "plugin:a")]
    await append(backend, evs, ds)

    claimed = await claim(backend, now=0, until=30)

    assert keys(claimed) == [
        ("plugin:a", "r1", 1),
        ("plugin:a", "r1", 2),
        ("plugin:a", "r1", 3),
        ("plugin:a", "r2", 1),
        ("plugin:a", "r2", 2),
        ("sink", "r1", 1),
        ("sink", "r1", 2),
        ("sink", "r1", 3),
        ("sink", "r2", 1),
        ("sink", "r2", 2),
    ]
    first = claimed[0]
    assert first.delivery == replace(
        delivery(event("r1", 1), "plugin:a"), claimed_by="c1", claimed_until=at(30)
    )
    assert first.event == event("r1", 1)
    assert_aware(first.delivery.claimed_until, first.event.occurred_at)


async def test_a_claimed_group_is_skipped_until_its_claim_expires(backend: Adapters) -> None:
    await append(backend, events_of("r1", [1, 2]), [delivery(e) for e in events_of("r1", [1, 2])])
    assert len(await claim(backend, now=0, until=30)) == 2

    # Someone else, or a later event of the same run, must not overtake the claim holder.
    await append(backend, [event("r1", 3)], [delivery(event("r1", 3))])
    assert await claim(backend, now=10, claimer="c2") == []
    assert await claim(backend, now=29.999, claimer="c2") == []

    again = await claim(backend, now=30, claimer="c2")
    assert keys(again) == [("sink", "r1", 1), ("sink", "r1", 2), ("sink", "r1", 3)]
    assert {c.delivery.claimed_by for c in again} == {"c2"}


async def test_a_head_that_is_not_due_blocks_its_whole_group(backend: Adapters) -> None:
    r1 = events_of("r1", [1, 2])
    r2 = events_of("r2", [1])
    await append(
        backend,
        [*r1, *r2],
        [
            delivery(r1[0], attempts=1, next_attempt_at=at(20), last_error="down"),
            delivery(r1[1]),  # due, but behind a head that is not
            delivery(r2[0], next_attempt_at=at(5)),
        ],
    )

    assert keys(await claim(backend, now=10)) == [("sink", "r2", 1)]
    later = await claim(backend, now=20, claimer="c2")
    assert keys(later) == [("sink", "r1", 1), ("sink", "r1", 2)]
    assert (later[0].delivery.attempts, later[0].delivery.last_error) == (1, "down")


async def test_delivered_and_dead_deliveries_no_longer_hold_their_group(backend: Adapters) -> None:
    evs = events_of("r1", [1, 2, 3])
    await append(backend, evs, [delivery(e) for e in evs])
    claimed = await claim(backend, now=0, until=30)

    # The flusher delivered #1, dead-lettered #2, released #3 (not tried).
    await update(
        backend,
        replace(claimed[0].delivery, status="delivered", attempts=1, claimed_until=None),
        replace(claimed[1].delivery, status="dead", attempts=5, last_error="x", claimed_until=None),
        replace(claimed[2].delivery, claimed_by=None, claimed_until=None),
    )

    assert keys(await claim(backend, now=1)) == [("sink", "r1", 3)]


async def test_claim_stops_at_the_limit_and_the_cut_group_stays_blocked(
    backend: Adapters,
) -> None:
    r1, r2 = events_of("r1", [1, 2, 3]), events_of("r2", [1, 2])
    await append(backend, [*r1, *r2], [delivery(e) for e in [*r1, *r2]])

    first = await claim(backend, now=0, limit=2)
    assert keys(first) == [("sink", "r1", 1), ("sink", "r1", 2)]
    # r1's third delivery stays behind its claimed head; r2 is free.
    assert keys(await claim(backend, now=1, claimer="c2")) == [("sink", "r2", 1), ("sink", "r2", 2)]
    assert await claim(backend, now=2, claimer="c3") == []
    assert await claim(backend, now=0, limit=0) == []


async def test_update_writes_the_delivery_state(backend: Adapters) -> None:
    ev = event("r1", 1)
    await append(backend, [ev], [delivery(ev)])
    (claimed,) = await claim(backend, now=0)

    retried = replace(
        claimed.delivery,
        attempts=1,
        next_attempt_at=at(42),
        claimed_by=None,
        claimed_until=None,
        last_error="HTTP 503",
    )
    await update(backend, retried)

    assert await claim(backend, now=41, claimer="c2") == []
    (again,) = await claim(backend, now=42, claimer="c2")
    assert again.delivery == replace(retried, claimed_by="c2", claimed_until=at(72))


# --- dead letters ------------------------------------------------------------------------


async def seed_dead(backend: Adapters) -> list[EventRecord]:
    evs = [*events_of("r1", [1, 2]), *events_of("r2", [1])]
    dead = {"attempts": 5, "status": "dead", "last_error": "gave up"}
    await append(
        backend,
        evs,
        [
            delivery(evs[0], "sink", **dead),
            delivery(evs[1], "sink", **dead),
            delivery(evs[2], "sink", **dead),
            delivery(evs[0], "plugin:a", **dead),
            delivery(evs[1], "plugin:a", status="delivered", attempts=1),
        ],
    )
    return evs


async def test_replay_dead_makes_dead_letters_pending_again(backend: Adapters) -> None:
    evs = await seed_dead(backend)

    async with backend.persistence.transaction() as tx:
        by_id = await tx.outbox.replay_dead(consumer="sink", event_ids=[evs[1].event_id], now=at(5))
        by_nothing = await tx.outbox.replay_dead(consumer=None, event_ids=[], now=at(5))
        by_consumer = await tx.outbox.replay_dead(consumer="plugin:a", event_ids=None, now=at(5))
    left = await dead_letters(backend)
    async with backend.persistence.transaction() as tx:
        rest = await tx.outbox.replay_dead(consumer=None, event_ids=None, now=at(6))
    none_left = await dead_letters(backend)

    assert (by_id, by_nothing, by_consumer, rest) == (1, 0, 1, 2)
    assert keys(left) == [("sink", "r1", 1), ("sink", "r2", 1)]
    assert none_left == []
    claimed = await claim(backend, now=6)
    assert keys(claimed) == [
        ("plugin:a", "r1", 1),
        ("sink", "r1", 1),
        ("sink", "r1", 2),
        ("sink", "r2", 1),
    ]
    replayed = claimed[2].delivery
    assert (replayed.status, replayed.attempts, replayed.next_attempt_at) == ("pending", 0, at(5))


# --- idempotency -------------------------------------------------------------------------


async def test_an_idempotency_key_comes_back_and_is_refused_twice(backend: Adapters) -> None:
    async with backend.persistence.transaction() as tx:
        await tx.apply(Changeset(idempotency=(idem("k1"), idem("k1", scope="other"))))
    with pytest.raises(DuplicateRecordError):
        async with backend.persistence.transaction() as tx:
            await tx.apply(Changeset(idempotency=(idem("k1", expires=999),)))
    async with backend.persistence.transaction() as tx:
        got = await tx.idempotency.get("run.create", "k1")
        assert await tx.idempotency.get("run.create", "nope") is None

    assert got == idem("k1")
    assert got is not None
    assert_aware(got.created_at, got.expires_at)


async def test_purge_drops_expired_completed_keys(backend: Adapters) -> None:
    records = [
        idem(key, state=state, expires=expires)
        for key, state, expires in [
            ("done-old", "completed", 10),
            ("done-now", "completed", 20),
            ("done-new", "completed", 21),
            ("busy-old", "in_progress", 10),
            ("still-busy", "in_progress", 5),
        ]
    ]
    async with backend.persistence.transaction() as tx:
        await tx.apply(Changeset(idempotency=tuple(records)))

    async with backend.persistence.transaction() as tx:
        purged = await tx.idempotency.purge_expired(at(20))
        left = [
            k
            for k in ("done-old", "done-now", "done-new", "busy-old", "still-busy")
            if await tx.idempotency.get("run.create", k) is not None
        ]

    assert purged == 2
    assert left == ["done-new", "busy-old", "still-busy"]


# --- logs --------------------------------------------------------------------------------


async def test_logs_come_back_in_the_order_written_per_run(backend: Adapters) -> None:
    async with backend.persistence.transaction() as tx:
        first = (log("r1", "one"), log("r1", "two", stage_id="a", when=5))
        await tx.apply(Changeset(new_runs=(run("r1"), run("r2")), logs=first))
    async with backend.persistence.transaction() as tx:
        await tx.apply(
            Changeset(logs=(log("r2", "other"), log("r1", "three", stage_id="b", when=1)))
        )
    async with backend.persistence.transaction() as tx:
        await tx.apply(Changeset(logs=(log("r1", "four", stage_id="a", when=0),)))

    every = await logs_of(backend, "r1")

    assert [r.message for r in every] == ["one", "two", "three", "four"]
    assert every[1] == log("r1", "two", stage_id="a", when=5)
    assert [r.message for r in every if r.stage_id == "a"] == ["two", "four"]
    assert_aware(*(r.at for r in every))
