"""A `stagewise worker` process, instrumented for the benchmark.

    python bench/worker.py worker workloads:workflows --db URL [worker options]

Exactly the CLI's worker (`stagewise_node.cli`), plus two things the runner needs:

* when the host has started, it writes `$BENCH_READY` (a file), so the runner knows when
  the worker is serving without parsing logs (the benchmark runs at log level warning);
* it counts the transactions it commits, the statements it sends and its round trips to
  the driver (`stagewise_sql.count_statements`), and
  writes them as JSON to `$BENCH_COUNTS` when it exits after SIGTERM (a SIGKILLed worker
  writes nothing).

With `$BENCH_PROFILE` set (a path), it also profiles itself with cProfile from start to
exit and writes the statistics to `PATH.<pid>` (read them with `python -m pstats`): where
a worker's CPU goes, for comparing two checkouts.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
from pathlib import Path

from stagewise_node import NodeHost
from stagewise_node.cli import main
from stagewise_sql import count_statements

_profile_path = os.environ.get("BENCH_PROFILE")
if _profile_path:
    import cProfile

    _profiler = cProfile.Profile()
    _profiler.enable()
    _stats_path = f"{_profile_path}.{os.getpid()}"
    atexit.register(lambda: (_profiler.disable(), _profiler.dump_stats(_stats_path)))

_counting = count_statements()  # every engine of this process, for its whole life
counts = _counting.__enter__()


def _write_counts() -> None:
    path = os.environ.get("BENCH_COUNTS")
    if path:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        data = {
            "commits": counts.commits,
            "statements": counts.statements,
            "trips": counts.trips,
            "cpu_ms": int((usage.ru_utime + usage.ru_stime) * 1000),
            "shapes": dict(counts.shapes.most_common(40)),
        }
        Path(path).write_text(json.dumps(data))


atexit.register(_write_counts)

_start = NodeHost.start


def _tell_ready(worker_id: str) -> None:
    ready = os.environ.get("BENCH_READY")
    if ready:
        Path(ready).write_text(worker_id)


async def _start_and_tell(self: NodeHost) -> None:
    await _start(self)
    _tell_ready(self.worker_id)


NodeHost.start = _start_and_tell  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
