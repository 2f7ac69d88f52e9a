"""Handlers for the outbox: deliver events to the sink and plugins, replay dead letters.

Events are written with the changes that caused them; `outbox.flush` delivers them later,
at least once and in per-run order. It claims whole (consumer, run) groups in one short
transaction (`OutboxStore.claim`: two flushers never get the same group), delivers with no
transaction open, and records the results in another: a delivery that fails blocks the
rest of its group until it is retried with backoff, or dead-lettered after
`KernelSettings.outbox_max_attempts` (after which the group's later events flow again).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import timedelta

from stagewise._commands import (
    OutboxFlush,
    OutboxFlushResult,
    PluginReplayDLQ,
    PluginReplayResult,
)
from stagewise._errors import StagewiseError
from stagewise._events import EVENT_ADAPTER
from stagewise._plugins import SINK_CONSUMER
from stagewise._records import ClaimedDelivery, Delivery
from stagewise._runtime import Runtime

logger = logging.getLogger("stagewise.kernel")


async def outbox_flush(rt: Runtime, cmd: OutboxFlush) -> OutboxFlushResult:
    now = rt.now
    claimer = f"{cmd.flusher_id}:{rt.ports.ids.new_id()}"
    async with rt.ports.persistence.transaction() as tx:
        claimed = await tx.outbox.claim(
            now=now,
            limit=cmd.limit,
            claimer=claimer,
            claim_until=now + timedelta(seconds=rt.settings.lease_seconds),
        )
    if not claimed:
        return OutboxFlushResult()

    groups: dict[tuple[str, str], list[ClaimedDelivery]] = defaultdict(list)
    for item in claimed:
        groups[(item.delivery.consumer, item.delivery.run_id)].append(item)
    updates: list[Delivery] = []
    tally: Counter[str] = Counter()
    for items in groups.values():
        updates += await _deliver_group(rt, sorted(items, key=lambda i: i.delivery.seq), tally)
    async with rt.ports.persistence.transaction() as tx:
        await tx.outbox.update(updates)
    retry_times = [
        d.next_attempt_at for d in updates if d.status == "pending" and d.next_attempt_at
    ]
    if retry_times:
        await rt.ports.scheduler.wake("outbox.flush", min(retry_times))
    return OutboxFlushResult(
        delivered=tally["delivered"], failed=tally["failed"], dead_lettered=tally["dead"]
    )


async def _deliver_group(
    rt: Runtime, items: list[ClaimedDelivery], tally: Counter[str]
) -> list[Delivery]:
    """Deliver one (consumer, run) group in `seq` order; what became of each delivery
    (counted in `tally`). The first one refused blocks the rest (per-run order): they
    wait, unclaimed, behind it."""
    updates: list[Delivery] = []
    settings = rt.settings
    blocked = False
    for item in items:
        d = replace(item.delivery, claimed_by=None, claimed_until=None)
        if blocked:
            updates.append(d)
            continue
        try:
            await _deliver(rt, d.consumer, item)
        except Exception as exc:
            attempts = d.attempts + 1
            message = f"{type(exc).__name__}: {exc}"[:2000]
            if attempts >= settings.outbox_max_attempts:
                logger.error("dead-lettered event %s for %s: %s", d.event_id, d.consumer, message)
                updates.append(replace(d, status="dead", attempts=attempts, last_error=message))
                tally["dead"] += 1
                continue  # a dead letter no longer holds the run's later events back
            delay = min(
                settings.outbox_max_backoff,
                settings.outbox_initial_backoff * 2 ** (attempts - 1),
            )
            retry_at = rt.now + timedelta(seconds=delay)
            updates.append(
                replace(d, attempts=attempts, last_error=message, next_attempt_at=retry_at)
            )
            tally["failed"] += 1
            blocked = True
        else:
            updates.append(replace(d, status="delivered", attempts=d.attempts + 1))
            tally["delivered"] += 1
    return updates


async def _deliver(rt: Runtime, consumer: str, item: ClaimedDelivery) -> None:
    event = EVENT_ADAPTER.validate_python(item.event.payload)
    if consumer == SINK_CONSUMER:
        await rt.ports.event_sink.publish(event)
        return
    plugin = rt.plugins.by_consumer(consumer)
    if plugin is None:
        raise StagewiseError(f"no plugin is registered for consumer {consumer!r}")
    await plugin.deliver(event)


async def plugin_replay_dlq(rt: Runtime, cmd: PluginReplayDLQ) -> PluginReplayResult:
    consumer = None
    if cmd.plugin_id is not None:
        consumer = SINK_CONSUMER if cmd.plugin_id == SINK_CONSUMER else f"plugin:{cmd.plugin_id}"
    now = rt.now
    async with rt.ports.persistence.transaction() as tx:
        count = await tx.outbox.replay_dead(consumer=consumer, event_ids=cmd.event_ids, now=now)
    if count:
        await rt.ports.scheduler.wake("outbox.flush", now)
    return PluginReplayResult(replayed=count)
