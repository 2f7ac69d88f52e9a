"""`NodeHost.stop()` delivers the outbox before it returns: the last events of the runs the
host executed reach the sink now, not at the next start of some host. And the host's
maintenance applies the kernel's retention."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from stagewise import RunStatus
from tests.integration.node.support import FAST, World, eventually
from tests.integration.node.test_node_host import three_stages

# After the first tick's flush, a hint may flush again only 60 s later, and the fake clock
# does not move: nothing is delivered while the host runs, so stop() alone can deliver.
HOLD = replace(FAST, flush_batch_window=60)


async def test_stop_delivers_the_last_events_before_it_returns() -> None:
    world = World.of([three_stages()])
    host = world.host(settings=HOLD)
    await host.start()
    await eventually(lambda: host.stats().ticks >= 1)  # the first flush is behind us
    run_id = await world.create(host.kernel, "three", {"n": 1})
    await eventually(lambda: world.finished(run_id))
    await eventually(lambda: host.stats().jobs_processed == 3)
    await asyncio.sleep(0.05)
    assert "run.completed" not in [e.type for e in world.sink.events]

    await host.stop(drain_timeout=1)
    await host.kernel.aclose()
    types = [e.type for e in world.sink.events if e.run_id == run_id]
    assert types[-2:] == ["stage.completed", "run.completed"]
    assert types.count("stage.completed") == 3
    assert (await world.run(run_id)).status is RunStatus.COMPLETED


async def test_a_sink_that_refuses_does_not_hold_stop() -> None:
    world = World.of([three_stages()])
    world.sink.fail = lambda event: True  # every delivery fails (and is retried later)
    host = world.host(settings=replace(HOLD, stop_flush_timeout=5))
    await host.start()
    run_id = await world.create(host.kernel, "three", {"n": 1})
    await eventually(lambda: world.finished(run_id))
    async with asyncio.timeout(4):
        await host.stop(drain_timeout=1)
    await host.kernel.aclose()
    assert world.sink.events == []
    assert host.stats().state == "stopped"


async def test_a_host_purges_runs_past_the_retention_in_its_maintenance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World.of([three_stages()])
    world.kernel_settings = replace(world.kernel_settings, retention=60)
    host = world.host(settings=HOLD)
    await host.start()
    try:
        run_id = await world.create(host.kernel, "three", {"n": 1})
        await eventually(lambda: world.finished(run_id))
        world.clock.advance(61)
        with caplog.at_level(logging.INFO, logger="stagewise.maintenance"):
            await host.tick()
        assert [r.run_id for r in world.persistence.snapshot_runs()] == []
        assert "purged 1 run(s) finished before" in caplog.text
    finally:
        await host.stop(drain_timeout=1)
        await host.kernel.aclose()
