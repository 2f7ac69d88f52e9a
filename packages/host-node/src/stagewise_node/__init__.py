"""stagewise's node host: a long-running worker process around one kernel, and the engine
that embeds one in an application.

    async with Engine("sqlite:///app.db", [checkout]) as engine:
        output = await engine.run("checkout", {"order_id": "o-1", "amount": 10})

    with SyncEngine("sqlite:///app.db", [checkout]) as engine:  # no event loop needed
        output = engine.run("checkout", {"order_id": "o-1", "amount": 10})

A worker process of its own, wired by hand:

    backend = await SqlBackend.connect("postgresql://app@db/stagewise")
    host = node_host(backend, registry, worker_id="w1",
                     settings=NodeHostSettings(concurrency=8))
    await host.run()   # serves until SIGTERM/SIGINT, then drains

`node_host` wires a kernel and a host to a database; `NodeHost` itself depends on the
kernel only (build it from any kernel and transport). The `stagewise` command line lives in
`stagewise_node.cli`.
"""

from stagewise_node._compose import node_host
from stagewise_node._engine import Engine, EngineOptions
from stagewise_node._host import NodeHost, default_worker_id
from stagewise_node._jobs import JobWakeups
from stagewise_node._scheduler import HostScheduler
from stagewise_node._settings import NodeHostSettings
from stagewise_node._stats import HostState, HostStats
from stagewise_node._sync import SyncEngine

__version__ = "0.1.0"

__all__ = [
    "Engine",
    "EngineOptions",
    "HostScheduler",
    "HostState",
    "HostStats",
    "JobWakeups",
    "NodeHost",
    "NodeHostSettings",
    "SyncEngine",
    "default_worker_id",
    "node_host",
]
