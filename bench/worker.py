"""A `stagewise worker` process, instrumented for the benchmark.

    python bench/worker.py worker workloads:workflows --db URL [worker options]

Exactly the CLI's worker (`stagewise_node.cli`), plus two things the runner needs:

* when the host has started, it writes `$BENCH_READY` (a file), so the runner knows when
  the worker is serving without parsing logs (the benchmark runs at log level warning);
* it counts, with SQLAlchemy engine events, the transactions it commits and the statements
  it sends, and writes them as JSON to `$BENCH_COUNTS` when it exits after SIGTERM (a
  SIGKILLed worker writes nothing).
"""

from __future__ import annotations

import atexit
import json
import os
import resource
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from stagewise_node import _host
from stagewise_node.cli import main

counts: Counter[str] = Counter()
shapes: Counter[str] = Counter()


def _on_commit(_conn: Any) -> None:
    counts["commits"] += 1


def _on_statement(
    _conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, many: bool
) -> None:
    counts["statements"] += 1
    shapes[" ".join(statement.split()[:4])[:60]] += 1


def _write_counts() -> None:
    path = os.environ.get("BENCH_COUNTS")
    if path:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = {"cpu_ms": int((usage.ru_utime + usage.ru_stime) * 1000)}
        data = {**counts, **cpu, "shapes": dict(shapes.most_common(40))}
        Path(path).write_text(json.dumps(data))


event.listen(Engine, "commit", _on_commit)
event.listen(Engine, "before_cursor_execute", _on_statement)
atexit.register(_write_counts)

_start = _host.NodeHost.start


def _tell_ready(worker_id: str) -> None:
    ready = os.environ.get("BENCH_READY")
    if ready:
        Path(ready).write_text(worker_id)


async def _start_and_tell(self: _host.NodeHost) -> None:
    await _start(self)
    _tell_ready(self.worker_id)


_host.NodeHost.start = _start_and_tell  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
