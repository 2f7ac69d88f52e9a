"""The run aggregate's maintenance decisions: what the reaper and the poller of suspended
stages may change, each checked again under the run's lock (a candidate read without locks
may be stale by then: started again, finished or cancelled), and a run's deadline.

`RunMaintenance` sits between the shared moves (`_run_flow.RunFlow`) and `_run.Run`, whose
docstring is the theory of operation.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Literal

from stagewise._decisions import Decision, Output, Reports, StartedAttempt
from stagewise._errors import LeaseExpiredError
from stagewise._records import ErrorInfo, JobMessage, Json
from stagewise._run_flow import RunFlow
from stagewise._run_rows import S
from stagewise._workflow import Workflow

__all__ = ["Reclaim", "RunMaintenance", "deadline_of"]

Reclaim = Literal["lease", "restarted", "stopped", "gone"]
"""Why the reaper takes an attempt back: its lease expired, its worker restarted under the
same id or stopped with it still running (past its drain deadline), or its worker is
presumed gone (see `_workers`)."""


def deadline_of(workflow: Workflow, created: datetime, given: datetime | None) -> datetime | None:
    """A new run's deadline: the earlier of the one it was given and its workflow's
    `timeout` from `created` (None when neither is set)."""
    limits = [given] if given is not None else []
    if workflow.timeout is not None:
        limits.append(created + timedelta(seconds=workflow.timeout))
    return min(limits, default=None)


class RunMaintenance(RunFlow):
    """The decisions maintenance makes about a run (see the module docstring)."""

    def expire_deadline(self) -> Decision[bool]:
        """Fail a run still unfinished at its deadline: its open stages are cancelled
        (running code is told to stop, queued jobs are dropped, sleeps and polls end) and
        the run is FAILED with `DeadlineExceededError`. False when the run ended, or its
        deadline moved past now (a rerun), since the candidate was read."""
        run = self.record
        if run.status.is_terminal or run.deadline is None or run.deadline > self.now:
            return self._decided(False)
        message = f"run {run.run_id!r} was still unfinished at its deadline, {run.deadline}"
        self._fail_run(ErrorInfo("DeadlineExceededError", message, retryable=False), None)
        self._log.stop_attempts = True
        return self._decided(True)

    def expire_lease(
        self, stage_id: str, job_id: str | None, *, why: Reclaim = "lease"
    ) -> Decision[str]:
        """The reaper: a RUNNING attempt held by `job_id` is retried (or fails the stage)
        when its lease expired, when its worker restarted or stopped (`why="restarted"`,
        `"stopped"`) or when its worker is presumed gone (`"gone"`); "retry", "failed", or
        "skipped" when the stage moved on meanwhile."""
        stage = self.stages.get(stage_id)
        if stage is None or stage.status is not S.RUNNING or stage.job_id != job_id:
            return self._decided("skipped")  # started again, or finished, meanwhile
        stale = stage.lease_expires_at is not None and stage.lease_expires_at <= self.now
        if why == "lease" and not stale:
            return self._decided("skipped")
        who = f"worker {stage.worker_id!r}"
        what = f"attempt {stage.attempt} of stage {stage_id!r}"
        message = {
            "lease": f"{who} stopped heartbeating {what}: its lease expired",
            "gone": f"{who} stopped heartbeating {what}: the worker is gone (no beat from it)",
            "restarted": f"{who} restarted while it ran {what}",
            "stopped": f"{who} stopped while it still ran {what} (past its drain deadline)",
        }[why]
        retryable = self._plan.stage(stage_id).retry.is_retryable(LeaseExpiredError(message))
        error = ErrorInfo("LeaseExpiredError", message, retryable=retryable)
        # A worker that died (gone, or restarting) did not fail the stage: the retry is
        # due at once, where a lease that merely expired keeps the policy's backoff.
        at_once = why != "lease"
        recorded = self._fail_or_retry(stage_id, error, trigger="expire", at_once=at_once)
        self._set_stage(stage_id, job_id=None)  # its late finish is lost, not a replay
        return self._decided(recorded.outcome, stage.job_id)

    def requeue(self, stage_id: str, enqueued_before: datetime) -> Decision[bool]:
        """Enqueue a due stage again whose job went to an outside transport before
        `enqueued_before` and never started (that delivery may be lost)."""
        stage = self.stages.get(stage_id)
        if (
            stage is None
            or stage.status not in (S.PENDING, S.RETRYING)
            or stage.enqueued_at is None
            or stage.enqueued_at >= enqueued_before
        ):
            return self._decided(False)
        self._set_stage(stage_id, enqueued_at=self.now)
        self._enqueue(stage_id, stage.attempt, self.now)
        return self._decided(True)

    def claim_poll(self, job: JobMessage) -> Decision[StartedAttempt | None]:
        """Hold a due SUSPENDED stage for one `check_completion` call: the poll's `job` id
        fences it as a delivery's does."""
        stage = self.stages.get(job.stage_id)
        now = self.now
        if (
            stage is None
            or stage.status is not S.SUSPENDED
            or (stage.due_at is not None and stage.due_at > now)
            or (stage.lease_expires_at is not None and stage.lease_expires_at > now)
        ):
            return self._decided(None)
        self._set_stage(job.stage_id, job_id=job.job_id, lease_expires_at=self._lease())
        return self._decided(self._snapshot(job, job.job_id))

    def record_poll(
        self,
        job: JobMessage,
        outcome: Output | float | ErrorInfo,
        reports: Reports,
        outputs: Mapping[str, Json],
        published: Mapping[str, Json] | None = None,
    ) -> Decision[str]:
        """What `check_completion` said, for a stage this poll (`job`, from `claim_poll`)
        still holds: "resumed" (ready), "rescheduled" (check again in `outcome` seconds, or
        the poll lost its hold) or "failed"."""
        stage_id = job.stage_id
        stage = self.stages.get(stage_id)
        if stage is None or stage.status is not S.SUSPENDED or stage.job_id != job.job_id:
            return self._decided("rescheduled")  # cancelled or taken over meanwhile
        self._report(stage, reports)
        if not isinstance(outcome, ErrorInfo):
            self._publish(stage_id, published or {})
        if isinstance(outcome, Output):
            self._complete_stage(stage_id, "resume", outcome, outputs)
            return self._decided("resumed")
        if isinstance(outcome, float):
            self._check_again(stage_id, outcome)
            return self._decided("rescheduled")
        self._fail_stage(stage_id, outcome)
        return self._decided("failed")
