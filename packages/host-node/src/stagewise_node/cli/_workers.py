"""`stagewise workers list`: the fleet, as its beats tell it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.table import Table
from rich.text import Text

from stagewise import WorkerRecord
from stagewise_node.cli._compose import connect
from stagewise_node.cli._output import console
from stagewise_node.cli._render import Times, duration
from stagewise_node.cli._text import safe_text

STATE_STYLE = {"live": "green", "gone": "red", "stopped": "dim"}


def state_of(worker: WorkerRecord, now: datetime) -> str:
    if worker.stopped_at is not None:
        return "stopped"
    return "live" if worker.is_live(now) else "gone"


def workers_table(workers: Sequence[WorkerRecord], now: datetime, times: Times) -> Table:
    order = {"live": 0, "gone": 1, "stopped": 2}
    rows = sorted(workers, key=lambda w: (order[state_of(w, now)], w.worker_id))
    live = sum(state_of(w, now) == "live" for w in rows)
    table = Table(title=f"{live} live worker(s), {len(rows)} known", title_justify="left")
    seen = times.column("last seen", [w.last_seen_at for w in rows], "%m-%d %H:%M:%S")
    table.add_column("worker", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("host", overflow="fold")
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("slots", justify="right", no_wrap=True)
    table.add_column("up", justify="right", no_wrap=True)
    table.add_column(seen.title, no_wrap=True)
    table.add_column("workflows", overflow="fold", ratio=1)
    for worker, when in zip(rows, seen.cells, strict=True):
        state = state_of(worker, now)
        flows = ", ".join(f"{w} {v}" for w, v in worker.workflows) or "-"
        table.add_row(
            safe_text(worker.worker_id),
            Text(state, style=STATE_STYLE[state]),
            safe_text(worker.host),
            str(worker.pid),
            str(worker.slots),
            duration(worker.started_at, worker.stopped_at or worker.last_seen_at),
            when,
            safe_text(flows),
        )
    return table


async def list_workers(*, db: str, times: Times) -> None:
    backend = await connect(db, migrate=False)
    try:
        async with backend.persistence.transaction() as tx:
            workers = await tx.workers.find()
        now = backend.clock.now()
    finally:
        await backend.close()
    console.print(workers_table(workers, now, times))
