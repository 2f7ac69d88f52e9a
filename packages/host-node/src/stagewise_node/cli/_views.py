"""Read a run back for display: its row, its stages, and its attempts (from the events)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stagewise import (
    BlobStore,
    EventRecord,
    Persistence,
    RunNotFoundError,
    RunRecord,
    RunStatus,
    RunValueRecord,
    StageRecord,
    WorkerRecord,
)


@dataclass
class Attempt:
    stage_id: str
    attempt: int
    started_at: datetime
    worker_id: str | None
    ended_at: datetime | None = None
    suspended_at: datetime | None = None
    outcome: str = "running"
    error: str | None = None


@dataclass
class RunView:
    run: RunRecord
    stages: list[StageRecord]
    attempts: list[Attempt] = field(default_factory=list)
    output: Any = None
    cancel_reason: str | None = None
    """The `--reason` of the cancellation, for a CANCELLED run (from its `run.cancelled`)."""
    waiting: str | None = None
    """For an unfinished run that no live worker can run: why it waits."""
    values: list[RunValueRecord] = field(default_factory=list)
    """The values the run published (`ctx.set_event`), by key."""

    def attempts_of(self, stage_id: str) -> list[Attempt]:
        return [a for a in self.attempts if a.stage_id == stage_id]


async def load_run(
    persistence: Persistence,
    blobs: BlobStore,
    run_id: str,
    *,
    with_output: bool = True,
    now: datetime | None = None,
) -> RunView:
    """The run with its stages and attempt history (and, given `now`, whether any live
    worker can run it).

    Raises:
        RunNotFoundError: no such run.
    """
    async with persistence.transaction() as tx:
        run = await tx.runs.get(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        stages = await tx.stages.for_run(run_id)
        events = await tx.outbox.events(run_id)
        values = await tx.values.for_run(run_id)
        workers = await tx.workers.find() if now is not None else []
    view = RunView(run=run, stages=stages, attempts=attempts_from(events), values=values)
    if now is not None:
        view.waiting = waiting_for(run, workers, now)
    if run.status is RunStatus.CANCELLED:
        cancels = [e for e in events if e.type == "run.cancelled"]
        reason = max(cancels, key=lambda e: e.seq).payload.get("reason") if cancels else None
        view.cancel_reason = reason if isinstance(reason, str) else None
    if with_output:
        view.output = run.output
        if run.output_ref is not None:
            view.output = json.loads(await blobs.get(run.output_ref))
    return view


def waiting_for(run: RunRecord, workers: list[WorkerRecord], now: datetime) -> str | None:
    """Why an unfinished run waits when no live worker can run it (None when one can):
    none is running, or none has its workflow version (a run recorded before versions
    needs only its workflow)."""
    if run.status.is_terminal:
        return None
    live = [w for w in workers if w.is_live(now)]
    if not live:
        return "no live worker (start one: stagewise worker)"
    versions = sorted({v for w in live for wf, v in w.workflows if wf == run.workflow_id})
    if run.workflow_version is None and versions:
        return None
    if run.workflow_version in versions:
        return None
    has = f"they have {', '.join(versions)}" if versions else "none of them has this workflow"
    return (
        f"no live worker has version {run.workflow_version or '-'} of this workflow ({has}); "
        "it waits until one that has it starts (see docs/deploys.md)"
    )


def attempts_from(events: list[EventRecord]) -> list[Attempt]:
    """Every attempt of every stage, in the order they started, each with how it ended:
    completed, failed, retried, abandoned (its worker let go of it: the retry's reason
    says why), released (given back at a drain), cancelled, suspended, or still running."""
    attempts: list[Attempt] = []
    current: dict[str, Attempt] = {}
    for event in sorted(events, key=lambda e: e.seq):
        payload = event.payload
        stage_id = payload.get("stage_id")
        if not isinstance(stage_id, str):
            continue
        if event.type == "stage.started":
            attempt = Attempt(
                stage_id=stage_id,
                attempt=int(payload.get("attempt", 1)),
                started_at=event.occurred_at,
                worker_id=payload.get("worker_id"),
            )
            attempts.append(attempt)
            current[stage_id] = attempt
            continue
        open_ = current.get(stage_id)
        if open_ is None:
            continue
        error = payload.get("error") or {}
        if event.type == "stage.suspended":
            open_.outcome, open_.suspended_at = "suspended", event.occurred_at
        elif event.type == "stage.completed":
            open_.outcome, open_.ended_at = "completed", event.occurred_at
        elif event.type == "stage.retrying":
            # A worker that died, restarted or stopped (or whose lease ran out) abandoned
            # the attempt; any other retry is the attempt's own failure.
            abandoned = error.get("type") == "LeaseExpiredError"
            open_.outcome = "abandoned" if abandoned else "retried"
            open_.ended_at = event.occurred_at
            open_.error = f"{error.get('type')}: {error.get('message')}"
        elif event.type == "stage.released":
            open_.outcome, open_.ended_at = "released", event.occurred_at
        elif event.type == "stage.cancelled":
            open_.outcome, open_.ended_at = "cancelled", event.occurred_at
        elif event.type == "stage.failed":
            open_.outcome, open_.ended_at = "failed", event.occurred_at
            open_.error = f"{error.get('type')}: {error.get('message')}"
    return attempts
