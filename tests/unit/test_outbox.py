"""outbox.flush delivers each event once per consumer, in per-run order, with retries,
dead letters and replay."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, defaultdict

from stagewise import (
    Event,
    KernelSettings,
    OutboxFlush,
    PluginReplayDLQ,
    RunTransition,
    define_plugin,
)
from stagewise.testing import TestEnvironment
from tests.unit.workflows import four_groups


async def test_each_event_reaches_each_plugin_once_in_per_run_order() -> None:
    got: dict[str, list[tuple[str, int]]] = defaultdict(list)
    everything = define_plugin(id="all", handle=lambda e: got["all"].append((e.run_id, e.seq)))

    async def on_done(event: Event) -> None:
        got["done"].append((event.run_id, event.seq))

    done = define_plugin(id="done", on=["run.completed"], handle=on_done)
    env = TestEnvironment([four_groups()], plugins=[everything, done])
    runs = [await env.create_run("four", {"n": i}) for i in range(3)]
    await env.run_until_idle()

    for run_id in runs:
        seqs = [s for r, s in got["all"] if r == run_id]
        assert seqs == list(range(1, len(seqs) + 1))
        assert seqs == [e.seq for e in env.sink.of_run(run_id)]
    assert len(got["done"]) == 3
    assert all(d.status == "delivered" for d in env.persistence.snapshot_deliveries())


async def test_a_failing_plugin_is_retried_with_backoff_and_dead_lettered_then_replayed() -> None:
    attempts: list[float] = []
    healthy = {"on": False}
    delivered: list[int] = []

    def handle(event: Event) -> None:
        if event.type == "run.created" and not healthy["on"]:
            attempts.append(env.clock.now().timestamp())
            raise ConnectionError("webhook down")
        delivered.append(event.seq)

    settings = KernelSettings(outbox_max_attempts=4, outbox_initial_backoff=2)
    env = TestEnvironment(
        [four_groups()], plugins=[define_plugin(id="hook", handle=handle)], settings=settings
    )
    run_id = await env.create_run("four", {"n": 1})
    await env.run_until_idle()

    # 4 attempts, 2 s, 4 s, 8 s apart; then dead: the later events flow again
    assert [b - a for a, b in itertools.pairwise(attempts)] == [2, 4, 8]
    assert delivered == list(range(2, len(env.sink.of_run(run_id)) + 1))
    dead = [d for d in env.persistence.snapshot_deliveries() if d.status == "dead"]
    assert [(d.consumer, d.seq, d.attempts) for d in dead] == [("plugin:hook", 1, 4)]
    assert "webhook down" in (dead[0].last_error or "")
    assert len(env.sink.of_run(run_id)) == len(delivered) + 1  # the sink was not held back

    healthy["on"] = True
    replayed = await env.kernel.dispatch(PluginReplayDLQ(plugin_id="hook"))
    assert replayed.replayed == 1
    await env.run_until_idle()
    assert delivered[-1] == 1
    assert not [d for d in env.persistence.snapshot_deliveries() if d.status != "delivered"]


async def test_a_failure_holds_back_later_events_of_the_same_run_only() -> None:
    order: list[tuple[str, int]] = []
    fail_once = {"armed": True}

    def handle(event: Event) -> None:
        if event.seq == 2 and fail_once["armed"]:
            fail_once["armed"] = False
            raise RuntimeError("transient")
        order.append((event.run_id, event.seq))

    env = TestEnvironment([four_groups()], plugins=[define_plugin(id="p", handle=handle)])
    a = await env.create_run("four", {"n": 1})
    b = await env.create_run("four", {"n": 2})
    await env.run_until_idle()
    for run_id in (a, b):
        seqs = [s for r, s in order if r == run_id]
        assert seqs == sorted(seqs) == list(range(1, len(seqs) + 1))


async def test_two_concurrent_flushers_do_not_deliver_an_event_twice() -> None:
    seen: Counter[str] = Counter()

    async def slow(event: Event) -> None:
        await asyncio.sleep(0)
        seen[event.event_id] += 1

    env = TestEnvironment([four_groups()], plugins=[define_plugin(id="slow", handle=slow)])
    for i in range(5):
        await env.create_run("four", {"n": i})
    await asyncio.gather(
        env.kernel.dispatch(OutboxFlush(flusher_id="one", limit=3)),
        env.kernel.dispatch(OutboxFlush(flusher_id="two", limit=3)),
        env.kernel.dispatch(OutboxFlush(flusher_id="three", limit=3)),
    )
    await env.run_until_idle()
    assert seen and set(seen.values()) == {1}
    assert sum(seen.values()) == len(env.persistence.snapshot_events())


async def test_concurrent_transitions_of_one_run_advance_it_once() -> None:
    env = TestEnvironment([four_groups()])
    run_id = await env.create_run("four", {"n": 1})
    await env.run_until_idle()
    results = await asyncio.gather(
        *(env.kernel.dispatch(RunTransition(run_id=run_id)) for _ in range(4))
    )
    assert {r.decision for r in results} == {"noop"}
    assert env.sink.types(run_id).count("run.completed") == 1
