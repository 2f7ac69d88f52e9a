"""stagewise's node host: a long-running worker process around one kernel.

    scheduler = HostScheduler()
    kernel = create_kernel(..., scheduler=scheduler)
    host = NodeHost(kernel=kernel, job_transport=transport, worker_id="w1",
                    settings=NodeHostSettings(concurrency=8), scheduler=scheduler)
    await host.run()   # serves until SIGTERM/SIGINT, then drains

The `stagewise` command line lives in `stagewise_node.cli`; it is the one place that wires
the SQL backend (the host itself depends on the kernel only).
"""

from stagewise_node._host import NodeHost, default_worker_id
from stagewise_node._jobs import JobWakeups
from stagewise_node._scheduler import HostScheduler
from stagewise_node._settings import NodeHostSettings
from stagewise_node._stats import HostState, HostStats

__version__ = "0.1.0"

__all__ = [
    "HostScheduler",
    "HostState",
    "HostStats",
    "JobWakeups",
    "NodeHost",
    "NodeHostSettings",
    "default_worker_id",
]
