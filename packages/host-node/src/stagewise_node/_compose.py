"""A kernel and a node host on one database: how the command line, the benchmarks and an
application that embeds a worker wire them.

    backend = await SqlBackend.connect(url)
    host = node_host(backend, registry, worker_id="w1")
    await host.run()  # or start() / stop() around the application's own work

The host is the kernel's Scheduler: the kernel is built first, with a `HostScheduler`
relay, and the host attaches itself to it, so the kernel's wake-up hints (a job due, a
poll due, a lease to watch) reach the host's loops at once instead of at their fallback
polls.
"""

from __future__ import annotations

from collections.abc import Sequence

from stagewise import EventSink, KernelSettings, Plugin, SystemClock, WorkflowSource
from stagewise_node._host import NodeHost
from stagewise_node._scheduler import HostScheduler
from stagewise_node._settings import NodeHostSettings
from stagewise_sql import DatabaseClock, SqlBackend


def node_host(
    backend: SqlBackend,
    registry: WorkflowSource,
    *,
    worker_id: str | None = None,
    settings: NodeHostSettings | None = None,
    kernel_settings: KernelSettings | None = None,
    event_sink: EventSink | None = None,
    plugins: Sequence[Plugin] = (),
) -> NodeHost:
    """A node host and its kernel (`host.kernel`) on `backend`, the host attached as the
    kernel's Scheduler. The kernel's leases and due times are on the backend's clock; so are
    the host's loops (the kernel's wake-up hints are on it) when that is the database's
    clock, and they are on the system clock when the backend was given a clock of its own
    (a `FakeClock` does not move by itself).

    Args:
        backend: the database (`SqlBackend.connect`); closing it is the caller's.
        registry: the workflows this worker runs.
        worker_id: defaults to `host-pid`.
        settings: the host's (concurrency, intervals, drain deadline).
        kernel_settings, event_sink, plugins: as for `SqlBackend.kernel`.

    Raises:
        ValueError: the heartbeat interval is not shorter than the kernel's lease.
    """
    scheduler = HostScheduler()
    kernel = backend.kernel(
        registry,
        scheduler=scheduler,
        event_sink=event_sink,
        plugins=plugins,
        settings=kernel_settings,
    )
    return NodeHost(
        kernel=kernel,
        job_transport=backend.job_transport,
        worker_id=worker_id,
        settings=settings,
        scheduler=scheduler,
        clock=backend.clock if isinstance(backend.clock, DatabaseClock) else SystemClock(),
    )
