"""One clock for the fleet: on the SQL backends leases, due times and beats follow the
database's clock, whatever the clock of the machine a worker runs on says."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from stagewise import (
    KernelSettings,
    RunCreate,
    RunStatus,
    StageContext,
    WorkflowBuilder,
    WorkflowRegistry,
    define_stage,
)
from stagewise_node import NodeHostSettings, node_host
from stagewise_sql import DatabaseClock, SqlBackend
from tests.conftest import Adapters

pytestmark = pytest.mark.slow


class SkewedClock:
    """A machine whose clock is `seconds` ahead of the true time (behind when negative)."""

    def __init__(self, seconds: float) -> None:
        self.skew = timedelta(seconds=seconds)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skew

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


async def test_a_machine_clock_90_s_ahead_is_measured_corrected_and_said_once(
    sql_backend: Adapters, caplog: pytest.LogCaptureFixture
) -> None:
    assert sql_backend.url is not None
    caplog.set_level(logging.INFO, logger="stagewise.sql")
    skewed = await SqlBackend.connect(sql_backend.url, local_clock=SkewedClock(90))
    honest = await SqlBackend.connect(sql_backend.url)
    try:
        assert isinstance(skewed.clock, DatabaseClock)
        assert isinstance(honest.clock, DatabaseClock)
        assert skewed.clock.offset == pytest.approx(-90, abs=0.5)
        assert honest.clock.offset == pytest.approx(0, abs=0.5)
        assert abs(skewed.clock.now() - honest.clock.now()) < timedelta(seconds=0.5)
        await skewed.clock.measure()  # measured again: still off, not said again
    finally:
        await skewed.close()
        await honest.close()

    said = [r.getMessage() for r in caplog.records if r.name == "stagewise.sql"]
    assert len(said) == 1, said
    assert said[0].startswith("this machine's clock is 90.0")
    assert "s ahead of the database's" in said[0]


async def test_a_clock_given_is_used_as_is_and_not_with_a_local_clock(
    sql_backend: Adapters,
) -> None:
    assert sql_backend.url is not None
    assert sql_backend.sql is not None and sql_backend.sql.clock is sql_backend.clock  # fake
    with pytest.raises(ValueError, match="not both"):
        await SqlBackend.connect(
            sql_backend.url, clock=sql_backend.clock, local_clock=SkewedClock(1)
        )


async def test_two_hosts_whose_clocks_disagree_by_90_s_run_every_stage_once(
    sql_backend: Adapters,
) -> None:
    # The scenario of issue 14: a second host 90 s ahead reaped the first one's live leases
    # (they looked a minute overdue to it), and stages ran twice. On one clock, none does.
    assert sql_backend.url is not None
    ran: Counter[str] = Counter()

    async def work(ctx: StageContext) -> str:
        ran[ctx.run_id] += 1
        await asyncio.sleep(0.3)
        return "done"

    flow = WorkflowBuilder("skew").pipe(define_stage(id="s", execute=work)).build()
    backends = [
        await SqlBackend.connect(sql_backend.url),
        await SqlBackend.connect(sql_backend.url, local_clock=SkewedClock(90)),
    ]
    fast = NodeHostSettings(
        concurrency=4,
        job_poll_interval=0.1,
        claim_interval=0.1,
        reap_interval=0.1,
        flush_interval=0.2,
        beat_interval=0.5,
    )
    hosts = [
        node_host(
            b,
            WorkflowRegistry([flow]),
            worker_id=f"host-{i}",
            settings=fast,
            kernel_settings=KernelSettings(lease_seconds=10),
        )
        for i, b in enumerate(backends)
    ]
    try:
        for host in hosts:
            await host.start()
        kernel = hosts[0].kernel
        run_ids = [(await kernel.dispatch(RunCreate(workflow_id="skew"))).run_id for _ in range(32)]
        runs = [await kernel.wait_for_run(r, timeout=60) for r in run_ids]
    finally:
        for host in hosts:
            await host.stop()
            await host.kernel.aclose()
        for b in backends:
            await b.close()

    assert [r.status for r in runs] == [RunStatus.COMPLETED] * 32
    assert set(ran.values()) == {1}, f"stages ran twice: {sorted(ran.values())}"
    async with sql_backend.persistence.transaction() as tx:
        events = [e for r in run_ids for e in await tx.outbox.events(r)]
    started_by = Counter(e.payload["worker_id"] for e in events if e.type == "stage.started")
    assert set(started_by) == {"host-0", "host-1"}, started_by  # both hosts took part
    assert not [e for e in events if e.type == "stage.retrying"]
