"""Handlers for the fleet's workers: a worker's beat, its clean stop (see `_workers`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from stagewise._commands import (
    StrandedRuns,
    WorkerBeat,
    WorkerBeatResult,
    WorkerStop,
    WorkerStopResult,
)
from stagewise._records import WorkerRecord
from stagewise._runtime import Runtime
from stagewise._workers import next_beat, presumed_gone


async def worker_beat(rt: Runtime, cmd: WorkerBeat) -> WorkerBeatResult:
    """Write the worker's row; say which other workers it now presumes gone, and (a hint)
    ask for a reap at once when there are: their attempts wait for no lease."""
    async with rt.unit(cmd.type) as unit:
        now = unit.now
        workers = {w.worker_id: w for w in await unit.tx.workers.find()}
        said = WorkerRecord(
            worker_id=cmd.worker_id,
            host=cmd.host,
            pid=cmd.pid,
            started_at=now,
            last_seen_at=now,
            beat_interval=cmd.beat_interval,
            streak_since=now,
            slots=cmd.slots,
            workflows=tuple(rt.registry.known()),
            software=cmd.software,
        )
        me = next_beat(workers.get(cmd.worker_id), said, now)
        await unit.tx.workers.save(me)
        workers[me.worker_id] = me
        active = await unit.tx.runs.active_versions() if cmd.survey else []
    gone = sorted(w.worker_id for w in workers.values() if presumed_gone(w, me, now))
    if gone:
        await rt.wake("lease.reapStale", now)
    return WorkerBeatResult(gone=gone, stranded=stranded(active, workers.values(), now))


def stranded(
    active: list[tuple[str, str | None, int]], workers: Iterable[WorkerRecord], now: datetime
) -> list[StrandedRuns]:
    """Of the unfinished runs by version, those no live worker has the version of (a run
    recorded before versions needs only a worker with its workflow)."""
    served = {pair for w in workers if w.is_live(now) for pair in w.workflows}
    ids = {workflow_id for workflow_id, _ in served}
    return [
        StrandedRuns(workflow_id=wf, workflow_version=version, runs=n)
        for wf, version, n in active
        if (wf, version) not in served and (version is not None or wf not in ids)
    ]


async def worker_stop(rt: Runtime, cmd: WorkerStop) -> WorkerStopResult:
    async with rt.unit(cmd.type) as unit:
        mine = [w for w in await unit.tx.workers.find() if w.worker_id == cmd.worker_id]
        if mine:
            await unit.tx.workers.save(replace(mine[0], stopped_at=unit.now))
    return WorkerStopResult(stopped=bool(mine))
