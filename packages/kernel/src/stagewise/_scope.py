"""What one transaction changes, collected so that it commits as one.

Theory of operation
-------------------
A handler opens a transaction, locks the runs it touches, and changes them through a
`RunScope` per run. The scope keeps the run and its stage rows, asks the transition table for
every state change, numbers the run's events (`seq` = run.event_seq + 1, so events of a run
are gap-free and ordered: only the holder of the run lock can number them), and records jobs
to enqueue or ack in a shared `Effects`.

`Core.commit(tx, effects, scopes)` then writes it all inside the transaction: run and stage
rows, outbox events with one delivery per consumer, and — when the job transport lives in the
same database — the job enqueues, acks and discards. Only after the transaction commits does
`Core.after_commit` feed an external transport, leave wake-up hints with the scheduler and
signal cancellation to attempts running in this process. That ordering is rule 1: nobody hears
of a change that might still roll back, and a transport never gets a ghost job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from stagewise._events import Event
from stagewise._ports import Transaction, WakeCommand
from stagewise._records import EventRecord, JobMessage, RunRecord, StageRecord
from stagewise._states import (
    RunTrigger,
    StageTrigger,
    next_run_status,
    next_stage_status,
)

if TYPE_CHECKING:
    from stagewise._core import Core


@dataclass
class Effects:
    """Side effects of one transaction beyond its rows."""

    jobs: list[JobMessage] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)
    discard_runs: list[str] = field(default_factory=list)
    hints: list[tuple[WakeCommand, datetime]] = field(default_factory=list)
    cancelled_runs: list[str] = field(default_factory=list)
    blob_deletes: list[str] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)

    def hint(self, command: WakeCommand, at: datetime) -> None:
        self.hints.append((command, at))


class RunScope:
    """Changes to one locked run (and its stages) inside one transaction."""

    def __init__(
        self,
        core: Core,
        tx: Transaction,
        effects: Effects,
        run: RunRecord,
        stages: list[StageRecord],
        command: str,
    ) -> None:
        self.core = core
        self.tx = tx
        self.effects = effects
        self.run = run
        self.command = command
        self.stages: dict[str, StageRecord] = {s.stage_id: s for s in stages}
        self._run_dirty = False
        self._new: dict[str, StageRecord] = {}
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()

    @property
    def now(self) -> datetime:
        return self.core.now

    # --- run ------------------------------------------------------------------------------

    def update_run(self, **changes: Any) -> RunRecord:
        self.run = replace(self.run, updated_at=self.now, **changes)
        self._run_dirty = True
        return self.run

    def transition_run(self, trigger: RunTrigger, **changes: Any) -> RunRecord:
        status = next_run_status(
            self.run.status, trigger, run_id=self.run.run_id, command=self.command
        )
        return self.update_run(status=status, **changes)

    # --- stages ---------------------------------------------------------------------------

    def add_stage(self, stage: StageRecord) -> None:
        self.stages[stage.stage_id] = stage
        self._new[stage.stage_id] = stage

    def update_stage(self, stage_id: str, **changes: Any) -> StageRecord:
        stage = replace(self.stages[stage_id], updated_at=self.now, **changes)
        self.stages[stage_id] = stage
        if stage_id in self._new:
            self._new[stage_id] = stage
        else:
            self._dirty.add(stage_id)
        return stage

    def transition_stage(self, stage_id: str, trigger: StageTrigger, **changes: Any) -> StageRecord:
        current = self.stages[stage_id]
        status = next_stage_status(
            current.status, trigger, stage_key=current.key, command=self.command
        )
        return self.update_stage(stage_id, status=status, **changes)

    def delete_stages(self, stage_ids: list[str]) -> None:
        for stage_id in stage_ids:
            self.stages.pop(stage_id, None)
            self._new.pop(stage_id, None)
            self._dirty.discard(stage_id)
            self._deleted.add(stage_id)

    def group(self, index: int) -> list[StageRecord]:
        return [s for s in self.stages.values() if s.group_index == index]

    # --- events and jobs ------------------------------------------------------------------

    def emit(self, event_type: type[Event], **fields: Any) -> None:
        """Append an event to the run's outbox, numbered after the run's last one."""
        seq = self.run.event_seq + 1
        self.update_run(event_seq=seq)
        event = event_type(
            event_id=self.core.ids.new_id(),
            run_id=self.run.run_id,
            workflow_id=self.run.workflow_id,
            seq=seq,
            occurred_at=self.now,
            **fields,
        )
        self.effects.events.append(
            EventRecord(
                event_id=event.event_id,
                run_id=event.run_id,
                seq=seq,
                type=event.type,
                occurred_at=event.occurred_at,
                payload=event.model_dump(mode="json"),
            )
        )

    def enqueue(self, stage_id: str, attempt: int, available_at: datetime) -> JobMessage:
        job = JobMessage(
            job_id=self.core.ids.new_id(),
            run_id=self.run.run_id,
            workflow_id=self.run.workflow_id,
            stage_id=stage_id,
            attempt=attempt,
            available_at=available_at,
            priority=self.run.priority,
        )
        self.effects.jobs.append(job)
        self.effects.hint("job.execute", available_at)
        return job

    def take_changes(
        self,
    ) -> tuple[list[str], list[StageRecord], list[StageRecord], RunRecord | None]:
        """What this scope changed since the last call — deleted stage ids, new stage rows,
        changed stage rows, the run if changed — and forget it (it is being written)."""
        deleted = sorted(self._deleted)
        new = list(self._new.values())
        dirty = [self.stages[k] for k in sorted(self._dirty)]
        if (deleted or new or dirty) and not self._run_dirty:
            # The rule `RunStore.lock_with_stages` lets adapters rely on: whoever writes a
            # run's stages writes its row too (a heartbeat touches `updated_at`).
            self.update_run()
        run = self.run if self._run_dirty else None
        self._new.clear()
        self._dirty.clear()
        self._deleted.clear()
        self._run_dirty = False
        return deleted, new, dirty, run


async def flush_scopes(tx: Transaction, scopes: Iterable[RunScope]) -> None:
    """Write the run and stage rows the scopes changed, for all of them at once: one upsert
    of stage rows, one of runs (deletes first, so a stage deleted and added again in one
    transaction is replaced)."""
    new: list[StageRecord] = []
    dirty: list[StageRecord] = []
    runs: list[RunRecord] = []
    for scope in scopes:
        deleted, added, changed, run = scope.take_changes()
        if deleted:
            await tx.stages.delete(scope.run.run_id, deleted)
        new += added
        dirty += changed
        if run is not None:
            runs.append(run)
    if new or dirty:
        # One upsert for both: a new row cannot exist already (the run is locked, and
        # deletes went first), so it is inserted.
        await tx.stages.save_many(new + dirty)
    if runs:
        await tx.runs.save_many(runs)
