"""The fleet's workers: when one is presumed gone.

Theory of operation
-------------------
Every worker writes its row at each beat (`worker.beat`, on the database's clock), saying
how often it beats. A worker that dies holding attempts would otherwise keep them until
their leases expire, a whole lease plus a reap interval after it died; a worker that sees
it silent takes them over at once instead (`lease.reapStale` with an `observer`).

"Silent" must not be mistaken for "the database was unreachable": after an outage every
worker has missed beats, and the first one back must not take over the attempts of the
others, which are alive and will beat in a moment. So each worker also records since when
it has beaten without a gap (`streak_since`), and an observer counts another worker's
silence only from the later of that worker's last beat and its own streak's start: it
takes over a worker that stayed silent for `GONE_AFTER` of that worker's own beat
intervals *while the observer itself could reach the database*. A worker that stopped
cleanly (`stopped_at`) gave its attempts back already and is never taken over.

Taking over is safe whatever the timing: a worker presumed gone that was in fact alive
finds, at its next heartbeat or finish, that its attempt moved on (the fence), and stops.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from stagewise._records import GONE_AFTER, WorkerRecord

STREAK_GAP = 1.5
"""A beat later than this many intervals after the one before starts a new streak."""


def next_beat(previous: WorkerRecord | None, beat: WorkerRecord, now: datetime) -> WorkerRecord:
    """`beat` (what the worker says of itself) as its row: `now` as its last sign of life,
    its start and its streak carried over from `previous` while it has beaten on time."""
    if previous is None or previous.stopped_at is not None:
        started, streak = now, now
    else:
        late = now - previous.last_seen_at > timedelta(seconds=STREAK_GAP * beat.beat_interval)
        started = previous.started_at
        streak = now if late else previous.streak_since
    return replace(beat, started_at=started, last_seen_at=now, streak_since=streak, stopped_at=None)


def presumed_gone(worker: WorkerRecord, observer: WorkerRecord, now: datetime) -> bool:
    """Whether `observer` may take over `worker`'s attempts (see the module docstring)."""
    if worker.stopped_at is not None or worker.worker_id == observer.worker_id:
        return False
    if observer.stopped_at is not None:
        return False
    silent_since = max(worker.last_seen_at, observer.streak_since)
    return now - silent_since > timedelta(seconds=GONE_AFTER * worker.beat_interval)
