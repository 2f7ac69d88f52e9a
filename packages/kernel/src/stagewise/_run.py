"""The run aggregate: a run and its stages, and every decision about how they change.

Theory of operation
-------------------
A run's row and its stage rows are one aggregate: they change together, decided here and
nowhere else. A handler locks the run (`RunStore.load`), builds a `Run` from the rows,
calls one method per decision, and writes what the decisions changed (`take_changes`) in
that same transaction. The methods take no ports and do no I/O: what they need from
outside comes in as arguments (the `Rules` of the transaction: the time, fresh ids,
settings; what an attempt produced; blob contents loaded beforehand, see
`refs_to_finish`), and what they decide comes out as data: a `Decision` holding the
outcome for the caller and the `Changes` it makes. Every decision can therefore be tested
without an event loop, and the rules below are kept in one place.

The rules, and the race each one closes:

* **Every state change is a lookup in the transition tables** (`_states`). A late worker,
  a duplicate delivery or a concurrent cancel asks for a change from a state that no
  longer allows it, and the lookup (or the fence before it) refuses it before anything is
  changed.
* **The stage row is the truth; a job is only a delivery of it.** An attempt starts only
  from PENDING/RETRYING at exactly its job's attempt, and records the job id as its fence
  token (`begin_attempt`); its outcome is recorded only while the stage is still RUNNING
  at that attempt, held by that job (`record_attempt`). A second copy of a delivery, a
  worker whose lease was reaped, an attempt of a cancelled run: each fails the fence and
  changes nothing. A COMPLETED stage never runs again.
* **Reaping moves the attempt on** (`expire_lease`): the retry gets the next attempt
  number, so the dead worker's job can never pass the fence again, and the lost attempt
  counts against the retry policy, so a job that kills its workers stops.
* **One version per transaction.** The run's row carries a version, bumped by one in each
  transaction that changes the run or any of its stages (a stage change always comes with
  the run's row, if only its `updated_at`), and written only where the stored row is still
  at the version it was read at. Under the run's lock this never refuses; it makes a lost
  update impossible whatever an adapter does, and lets a database that read the stages
  with a snapshot older than its lock (PostgreSQL) tell whether they are current.
* **Events are numbered under the lock**: `seq` is the run's `event_seq + 1`, so a run's
  events are gap-free and in order, whoever emits them.
* **A group ends exactly once.** The stages of a parallel group finish in transactions
  serialized by the run's lock; the last one sees every sibling COMPLETED and starts the
  next group or completes the run, the others see the group unfinished (`_advance`).
  Deciding from the rows read under the lock, never from what a caller remembers, is what
  makes `advance` safe to call twice or concurrently.
* **A run that fails or is cancelled closes every open stage and drops its queued jobs**
  in the same transaction, and code still running one of its attempts is told to stop;
  that attempt's late outcome then fails the fence.

Ordering: the decisions of a transaction apply in the order they are made (steps of one
group commit that touch the same run see each other's changes). Blobs a change refers to
are written before its transaction commits, so no row ever points at a missing blob;
blobs nothing refers to any more are deleted only after it commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from stagewise._decisions import (
    Beat,
    Decision,
    Output,
    Recorded,
    Reports,
    Rules,
    Start,
    Suspension,
)
from stagewise._errors import ConflictError
from stagewise._events import RunCancelled, RunCreated, RunStarted, StageReleased, StageStarted
from stagewise._records import (
    ErrorInfo,
    JobMessage,
    Json,
    RunRecord,
    SignalRecord,
    StreamItemRecord,
)
from stagewise._run_maintenance import deadline_of
from stagewise._run_rows import S, blob_keys, holds, recorded_by
from stagewise._run_streams import RunStreams
from stagewise._states import RunStatus
from stagewise._text import scrub
from stagewise._workflow import Workflow


class Run(RunStreams):
    """A run and its stage rows as read under the run's lock, deciding every change."""

    @classmethod
    def create(
        cls,
        *,
        run_id: str,
        workflow: Workflow,
        input: Json,
        config: dict[str, Json],
        priority: int,
        idempotency_key: str | None,
        rules: Rules,
        metadata: dict[str, str] | None = None,
        deadline: datetime | None = None,
    ) -> Decision[Run]:
        """A new PENDING run (its row is inserted, at version 1), due to finish by the
        earlier of `deadline` and the workflow's `timeout` from now."""
        now = rules.now
        record = RunRecord(
            run_id=run_id,
            workflow_id=workflow.id,
            status=RunStatus.PENDING,
            input=input,
            config=config,
            created_at=now,
            updated_at=now,
            priority=priority,
            idempotency_key=idempotency_key,
            workflow_version=workflow.version,
            metadata=dict(metadata or {}),
            deadline=deadline_of(workflow, now, deadline),
        )
        run = cls(record, (), workflow=workflow, rules=rules, new=True)
        run._emit(RunCreated, priority=priority)
        return run._decided(run)

    # --- starting ----------------------------------------------------------------------

    def start(self) -> Decision[bool]:
        """Claim a PENDING run: RUNNING, its first group's stages created and their jobs
        enqueued. False when it was not PENDING any more."""
        if self.record.status is not RunStatus.PENDING:
            return self._decided(False)
        self._transition_run("claim", started_at=self.now)
        self._emit(RunStarted)
        self._start_group(0)
        return self._decided(True)

    def begin_attempt(self, job: JobMessage, worker_id: str) -> Decision[Start]:
        """The start fence: `job` takes its stage (RUNNING, its lease) only if the stage
        waits for exactly this attempt and is due."""
        stage = self.stages.get(job.stage_id)
        if stage is None:
            return self._decided(Start(refused="lost", reason="the stage does not exist"), job)
        if self.record.status is RunStatus.CANCELLED or stage.status is S.CANCELLED:
            return self._decided(Start(refused="cancelled", reason="the run was cancelled"), job)
        if stage.status is S.COMPLETED:
            return self._decided(Start(refused="completed"), job)
        if (
            stage.attempt != job.attempt
            or stage.status not in (S.PENDING, S.RETRYING)
            or self.record.status is not RunStatus.RUNNING
        ):
            reason = f"the stage is {stage.status.value} at attempt {stage.attempt}"
            # A stale or duplicate delivery; the one that holds the stage keeps its job.
            drop = job if stage.job_id != job.job_id else None
            return self._decided(Start(refused="lost", reason=reason), drop)
        if stage.due_at is not None and stage.due_at > self.now:
            return self._decided(Start(not_before=stage.due_at))
        self._set_stage(
            job.stage_id,
            "start",
            job_id=job.job_id,
            worker_id=worker_id,
            lease_expires_at=self._lease(),
            started_at=stage.started_at or self.now,
            due_at=None,
        )
        self._emit(StageStarted, stage_id=job.stage_id, attempt=job.attempt, worker_id=worker_id)
        return self._decided(Start(started=self._snapshot(job, worker_id)))

    # --- an attempt's outcome, its heartbeat, its release --------------------------------

    def record_attempt(
        self,
        job: JobMessage,
        outcome: Output | Suspension | ErrorInfo,
        reports: Reports,
        outputs: Mapping[str, Json],
        mailbox: Sequence[SignalRecord] = (),
        published: Mapping[str, Json] | None = None,
        closing: Mapping[str, StreamItemRecord | None] | None = None,
    ) -> Decision[Recorded]:
        """The finish fence, then the outcome: the stage completes (and the run moves on),
        suspends, or fails (retried per its policy, or failing the run). `outputs` holds
        the blobs `refs_to_finish(job.stage_id)` named, by key; `mailbox`, for a signal
        wait beginning, the run's unconsumed signals on its topic, oldest first (the first
        is consumed instead of waiting: `_run_signals`); `published`, the values the attempt
        set (`ctx.set_event`), and `closing`, the streams it closed with their last items
        (`ctx.close_stream`), both written unless the attempt failed."""
        stage = self.stages.get(job.stage_id)
        if stage is None:
            return self._decided(Recorded("lost", error="the stage no longer exists"))
        if stage.status is S.CANCELLED or self.record.status is RunStatus.CANCELLED:
            dropped = "the run was cancelled; the result is dropped"
            return self._decided(Recorded("cancelled", error=dropped))
        replayed = recorded_by(stage, job)
        if replayed is not None:  # this very finish committed before: the same answer
            return self._decided(Recorded(replayed, replayed=True))
        if not holds(stage, job):
            held = f"the stage is {stage.status.value} at attempt {stage.attempt} "
            return self._decided(Recorded("lost", error=held + f"held by {stage.job_id!r}"))
        self._report(stage, reports)
        if not isinstance(outcome, ErrorInfo):
            self._publish(job.stage_id, published or {})
            self._close_streams(job, closing or {})
        if isinstance(outcome, Output):
            self._complete_stage(job.stage_id, "complete", outcome, outputs)
            return self._decided(Recorded("completed"))
        if isinstance(outcome, Suspension) and outcome.wait == "signal" and mailbox:
            taken = self._consume_at_start(job.stage_id, mailbox[0], outputs)
            return self._decided(Recorded("completed" if taken == "completed" else "failed"))
        if isinstance(outcome, Suspension):
            self._suspend(job.stage_id, outcome)
            return self._decided(Recorded("suspended"))
        return self._decided(self._fail_or_retry(job.stage_id, outcome, trigger="retry"))

    def heartbeat(self, job: JobMessage, reports: Reports) -> Decision[Beat]:
        """Extend the attempt's lease and write what it reported; or say why not."""
        stage = self.stages.get(job.stage_id)
        now = self.now
        if stage is None:
            return self._decided(Beat(now, True, True, lost="the stage no longer exists"))
        if stage.status is S.CANCELLED or self.record.status is RunStatus.CANCELLED:
            return self._decided(Beat(stage.lease_expires_at or now, True, True))
        if stage.attempt == job.attempt and stage.status in (S.PENDING, S.RETRYING):
            return self._decided(Beat(now, False, False))  # early: not started yet
        if not holds(stage, job):
            reason = f"the stage is {stage.status.value} at attempt {stage.attempt}"
            return self._decided(Beat(now, True, True, lost=reason))
        lease = self._lease()
        self._set_stage(job.stage_id, lease_expires_at=lease)
        self._report(self.stages[job.stage_id], reports)
        return self._decided(Beat(lease, False, True))

    def release(self, job: JobMessage, reports: Reports) -> Decision[bool]:
        """Give an unfinished attempt back (a drain): the stage waits for another worker at
        once under the next attempt number, which does not count against the retry policy
        (a new number, so the released job can never pass the fence again, and the history
        shows two attempts, not one started twice). False when the job no longer held the
        stage."""
        stage = self.stages.get(job.stage_id)
        if stage is None or not holds(stage, job):
            return self._decided(False)
        self._report(stage, reports)
        following = stage.attempt + 1
        self._set_stage(
            job.stage_id,
            "release",
            attempt=following,
            uncounted=stage.uncounted + 1,
            job_id=None,
            worker_id=None,
            lease_expires_at=None,
            due_at=self.now,
            enqueued_at=self.now,
        )
        self._emit(
            StageReleased,
            stage_id=job.stage_id,
            attempt=stage.attempt,
            next_attempt=following,
            worker_id=stage.worker_id,
        )
        self._enqueue(job.stage_id, following, self.now)
        return self._decided(True, job)

    # --- commands ----------------------------------------------------------------------

    def advance(self, outputs: Mapping[str, Json]) -> Decision[str]:
        """`run.transition`: "advanced", "completed", "failed" or "noop" (see `_advance`)."""
        return self._decided(self._advance(outputs))

    def cancel(self, reason: str | None) -> Decision[bool]:
        """CANCELLED, every open stage with it; False when the run had already ended."""
        if self.record.status.is_terminal:
            return self._decided(False)
        self._close_open_stages()
        self._transition_run("cancel", finished_at=self.now)
        self._emit(RunCancelled, reason=None if reason is None else scrub(reason))
        self._log.stop_attempts = True
        return self._decided(True)

    def rerun_from(self, stage_id: str) -> Decision[list[str]]:
        """Run a finished run again from `stage_id`: that stage, its unfinished siblings and
        every later stage; their outputs and blobs are forgotten. The reset stage ids.

        Raises:
            InvalidTransitionError: the run has not finished.
            StageNotFoundError: the workflow has no such stage.
            ConflictError: a stage of an earlier group did not complete.
        """
        plan = self._plan
        index = plan.group_of(stage_id)
        self._run_status("rerun")  # refuses an active run before anything changes
        for earlier in plan.groups[:index]:
            for sdef in earlier:
                row = self.stages.get(sdef.id)
                if row is None or row.status is not S.COMPLETED:
                    state = "never started" if row is None else row.status.value
                    raise ConflictError(
                        f"cannot rerun run {self.record.run_id!r} from {stage_id!r}: earlier "
                        f"stage {sdef.id!r} is {state}"
                    )
        reset = sorted(
            s.id
            for s in plan.groups[index]
            if s.id == stage_id or self._status(s.id) is not S.COMPLETED
        )
        later = sorted(s.stage_id for s in self.stages.values() if s.group_index > index)
        numbers = self._last_attempts(reset + later)
        self._transition_run(
            "rerun",
            current_group=index,
            output=None,
            output_ref=None,
            error=None,
            finished_at=None,
            attempts_before=numbers,
            # Its deadline was for the run that ended: the rerun gets the workflow's
            # timeout afresh, from now (a deadline given at creation does not carry over).
            deadline=deadline_of(plan, self.now, None),
        )
        for sid in reset + later:
            self._values.pop(sid, None)
            if sid in self.stages:
                self._log.blob_deletes += blob_keys(self.stages[sid])
        for sid in later:
            self.stages.pop(sid)
            self._log.delete_stage(sid)
        for sid in reset:
            if sid in self.stages:
                self._set_stage(sid, "reset")  # checks the table
            self._new_stage(sid, index)  # its attempt numbers go on
        self._emit(RunStarted, rerun_from=stage_id)
        return self._decided(reset)
