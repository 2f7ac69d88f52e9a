"""A run's rows, and the bookkeeping every decision of the run aggregate is made of.

`RunRows` is the base of the aggregate (`_run.Run`, whose docstring is the theory of
operation; `_run_flow.RunFlow` sits between them). It holds the run's row and its stage rows
as read under the run's lock and records each change as data in a `ChangeLog`: every state
change goes through the transition tables (`_set_stage`, `_transition_run`), every change
bumps the run's row to the version after the stored one (`_bump`), every event is numbered
after the run's last (`_emit`), and `_decided` closes a decision, handing its changes back
and keeping them for the transaction (`take_changes`).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from stagewise._decisions import ChangeLog, Decision, Rules, RunChanges, StartedAttempt
from stagewise._events import Event
from stagewise._records import EventRecord, JobMessage, Json, RunRecord, StageRecord
from stagewise._states import (
    RunStatus,
    RunTrigger,
    StageStatus,
    StageTrigger,
    next_run_status,
    next_stage_status,
)
from stagewise._workflow import Workflow

T = TypeVar("T")
S = StageStatus


class RunRows:
    """A run and its stage rows as read under the run's lock, and the changes made to
    them so far (see the module docstring)."""

    def __init__(
        self,
        record: RunRecord,
        stages: Iterable[StageRecord],
        *,
        workflow: Workflow | None,
        rules: Rules,
        new: bool = False,
    ) -> None:
        self.record = record
        self.stages: dict[str, StageRecord] = {s.stage_id: s for s in stages}
        self.workflow = workflow
        """None when this process does not know the run's workflow: only decisions that
        need no plan (cancel) can be made."""
        self.rules = rules
        self._version = None if new else record.version  # as stored; None: not yet stored
        self._values: dict[str, Json] = {}  # outputs known in memory, by stage id
        self._log = ChangeLog()

    def take_changes(self) -> RunChanges:
        """Everything decided since the last call, to write (and forget: it is written)."""
        changes = self._log.take()
        expected = self._version
        if changes.run is not None:
            self._version = changes.run.version
        return RunChanges(changes, expected)

    @property
    def now(self) -> datetime:
        return self.rules.now

    def refs_to_finish(self, completing: str | None = None) -> list[str]:
        """Blob keys of the outputs that completing stage `completing` (or `advance`, with
        None) would need to build the run's output: load them before that decision."""
        plan, index = self.workflow, self.record.current_group
        if plan is None or index != len(plan.groups) - 1:
            return []
        refs = []
        for sdef in plan.groups[index]:
            if sdef.id == completing:
                continue
            row = self.stages.get(sdef.id)
            if row is None or row.status is not S.COMPLETED:
                return []  # the run does not complete with this decision
            if row.output_ref is not None and sdef.id not in self._values:
                refs.append(row.output_ref)
        return refs

    def handed_unheard(self, worker_id: str, known: Container[str]) -> StartedAttempt | None:
        """A RUNNING attempt `worker_id` holds under a job id it does not know (not in
        `known`): one handed to it (eager dispatch) by a finish whose commit it never heard
        of. Its caller runs it, as it would have; no decision is made here."""
        run = self.record
        for stage in self.stages.values():
            unknown = stage.job_id is not None and stage.job_id not in known
            if stage.status is S.RUNNING and stage.worker_id == worker_id and unknown:
                assert stage.job_id is not None
                job = JobMessage(
                    stage.job_id,
                    run.run_id,
                    run.workflow_id,
                    stage.stage_id,
                    stage.attempt,
                    available_at=stage.started_at or self.now,
                    priority=run.priority,
                    workflow_version=run.workflow_version,
                )
                return self._snapshot(job, worker_id)
        return None

    # --- the bookkeeping under every decision ----------------------------------------------

    @property
    def _plan(self) -> Workflow:
        assert self.workflow is not None, "this decision needs the run's workflow"
        return self.workflow

    def _value(self, stage_id: str, outputs: Mapping[str, Json]) -> Json:
        """A completed stage's output: known in memory, inline in its row, or loaded."""
        if stage_id in self._values:
            return self._values[stage_id]
        stage = self.stages[stage_id]
        return stage.output if stage.output_ref is None else outputs[stage.output_ref]

    def _status(self, stage_id: str) -> StageStatus | None:
        stage = self.stages.get(stage_id)
        return None if stage is None else stage.status

    def _lease(self) -> datetime:
        return self.now + timedelta(seconds=self.rules.settings.lease_seconds)

    def _snapshot(self, job: JobMessage, worker_id: str) -> StartedAttempt:
        # A copy of the stages: later decisions of the same transaction change ours.
        return StartedAttempt(job, worker_id, self.record, dict(self.stages))

    def _run_status(self, trigger: RunTrigger) -> RunStatus:
        return next_run_status(
            self.record.status, trigger, run_id=self.record.run_id, command=self.rules.command
        )

    def _transition_run(self, trigger: RunTrigger, **fields: Any) -> None:
        self._bump(status=self._run_status(trigger), **fields)

    def _bump(self, **fields: Any) -> RunRecord:
        """Change the run's row: always at the version after the one stored."""
        version = 1 if self._version is None else self._version + 1
        self.record = replace(self.record, updated_at=self.now, version=version, **fields)
        self._log.set_run(self.record)
        return self.record

    def _set_stage(
        self, stage_id: str, trigger: StageTrigger | None = None, **fields: Any
    ) -> StageRecord:
        current = self.stages[stage_id]
        if trigger is not None:
            fields["status"] = next_stage_status(
                current.status, trigger, stage_key=current.key, command=self.rules.command
            )
        stage = replace(current, updated_at=self.now, **fields)
        self.stages[stage_id] = stage
        self._log.save_stage(stage)
        return stage

    def _emit(self, event_type: type[Event], **fields: Any) -> None:
        """Append an event, numbered after the run's last one (see the module docstring)."""
        seq = self.record.event_seq + 1
        run = self._bump(event_seq=seq)
        event = event_type(
            event_id=self.rules.new_id(),
            run_id=run.run_id,
            workflow_id=run.workflow_id,
            seq=seq,
            occurred_at=self.now,
            **fields,
        )
        self._log.events.append(
            EventRecord(
                event.event_id, run.run_id, seq, event.type, self.now, event.model_dump(mode="json")
            )
        )

    def _enqueue(self, stage_id: str, attempt: int, at: datetime) -> None:
        run = self.record
        self._log.jobs.append(
            JobMessage(
                self.rules.new_id(),
                run.run_id,
                run.workflow_id,
                stage_id,
                attempt,
                available_at=at,
                priority=run.priority,
                workflow_version=run.workflow_version,
            )
        )

    def _decided(self, outcome: T, drop: JobMessage | str | None = None) -> Decision[T]:
        """Close the decision: its changes (with the run's row whenever a stage changed,
        and `drop`'s delivery acknowledged), kept for the transaction and returned."""
        log = self._log
        if drop is not None:
            log.acks.append(drop if isinstance(drop, str) else drop.job_id)
        if log.needs_run:
            self._bump()
        return Decision(outcome, log.decision())


def holds(stage: StageRecord, job: JobMessage) -> bool:
    """The finish fence: the stage is RUNNING at this job's attempt, held by this job."""
    return stage.status is S.RUNNING and stage.job_id == job.job_id and stage.attempt == job.attempt


Finished = Literal["completed", "suspended", "failed", "retry"]


def recorded_by(stage: StageRecord, job: JobMessage) -> Finished | None:
    """What `job`'s own finish already recorded on `stage`, if that is where the stage is:
    a finish retried after its commit succeeded unheard. Only a job's own finish leaves the
    stage past RUNNING with that job's id (the reaper and a cancel clear it), and one
    attempt has one outcome, so the outcome found is the one this finish carries."""
    if stage.job_id != job.job_id:
        return None
    if stage.attempt == job.attempt and stage.status in _FINISHED_AS:
        return _FINISHED_AS[stage.status]
    if stage.attempt == job.attempt + 1 and stage.status is S.RETRYING:
        return "retry"
    return None


_FINISHED_AS: dict[StageStatus, Finished] = {
    S.COMPLETED: "completed",
    S.SUSPENDED: "suspended",
    S.FAILED: "failed",
}


def blob_keys(stage: StageRecord) -> list[str]:
    keys = list(stage.artifacts.values())
    if stage.output_ref is not None:
        keys.append(stage.output_ref)
    return keys
