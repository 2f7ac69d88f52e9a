"""Helpers for the node host's tests: a host on the in-memory adapters and a FakeClock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stagewise import (
    Kernel,
    KernelSettings,
    RunCreate,
    RunRecord,
    RunStatus,
    StageRecord,
    Workflow,
    WorkflowRegistry,
    create_kernel,
)
from stagewise.testing import (
    CollectingEventSink,
    FakeClock,
    InMemoryBlobStore,
    InMemoryJobQueue,
    InMemoryPersistence,
    NoopScheduler,
)
from stagewise_node import HostScheduler, NodeHost, NodeHostSettings

FAST = NodeHostSettings(
    concurrency=4,
    job_poll_interval=60,
    claim_interval=60,
    suspended_poll_interval=60,
    reap_interval=60,
    flush_interval=60,
    flush_batch_window=0,
    heartbeat_interval=1,
    drain_timeout=5,
)
"""Fallback intervals far beyond anything a test waits for: only hints move the host."""


async def eventually(predicate: Callable[[], Any], *, within: float = 5.0) -> None:
    """Wait (real time, bounded) until `predicate()` is truthy; it may be async."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.002)


@dataclass
class World:
    """One in-memory database shared by any number of hosts and clients."""

    registry: WorkflowRegistry
    clock: FakeClock
    persistence: InMemoryPersistence
    queue: InMemoryJobQueue
    blobs: InMemoryBlobStore
    sink: CollectingEventSink
    kernel_settings: KernelSettings

    @classmethod
    def of(cls, workflows: Sequence[Workflow], *, lease_seconds: float = 3.0) -> World:
        clock = FakeClock()
        persistence = InMemoryPersistence()
        return cls(
            registry=WorkflowRegistry(workflows),
            clock=clock,
            persistence=persistence,
            queue=InMemoryJobQueue(clock, persistence),
            blobs=InMemoryBlobStore(),
            sink=CollectingEventSink(),
            kernel_settings=KernelSettings(lease_seconds=lease_seconds, sync_workers=4),
        )

    def kernel(self, scheduler: Any = None, transport: Any = None) -> Kernel:
        return create_kernel(
            persistence=self.persistence,
            blob_store=self.blobs,
            job_transport=self.queue if transport is None else transport,
            event_sink=self.sink,
            scheduler=scheduler or NoopScheduler(),
            clock=self.clock,
            registry=self.registry,
            settings=self.kernel_settings,
        )

    def host(
        self,
        worker_id: str = "w1",
        settings: NodeHostSettings = FAST,
        transport: Any = None,
    ) -> NodeHost:
        scheduler = HostScheduler()
        kernel = self.kernel(scheduler, transport)
        return NodeHost(
            kernel=kernel,
            job_transport=self.queue if transport is None else transport,
            worker_id=worker_id,
            settings=settings,
            scheduler=scheduler,
            clock=self.clock,
        )

    async def create(self, kernel: Kernel, workflow_id: str, input: Any = None) -> str:
        result = await kernel.dispatch(RunCreate(workflow_id=workflow_id, input=input))
        return result.run_id

    async def run(self, run_id: str) -> RunRecord:
        async with self.persistence.transaction() as tx:
            run = await tx.runs.get(run_id)
        assert run is not None
        return run

    async def stages(self, run_id: str) -> dict[str, StageRecord]:
        async with self.persistence.transaction() as tx:
            return {s.stage_id: s for s in await tx.stages.for_run(run_id)}

    async def status(self, run_id: str) -> RunStatus:
        return (await self.run(run_id)).status

    async def finished(self, run_id: str) -> bool:
        return (await self.status(run_id)).is_terminal


async def stop_all(*hosts: NodeHost) -> None:
    for host in hosts:
        await host.stop(drain_timeout=1)
        await host.kernel.aclose()
