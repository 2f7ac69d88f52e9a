"""The moves several decisions of the run aggregate share: how a run goes from group to
group (`_advance`), completes, fails or is closed, and how a stage's outcome is applied
(`_complete_stage`, `_suspend`, `_fail_or_retry`, `_report`).

`RunFlow` sits between the bookkeeping (`_run_rows.RunRows`) and the decisions callers make
(`_run.Run`, whose docstring is the theory of operation).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta

from stagewise._decisions import BlobWrite, Output, Recorded, Reports, Suspension
from stagewise._errors import StageOutputError
from stagewise._events import (
    EventError,
    RunCompleted,
    RunFailed,
    RunSuspended,
    StageCancelled,
    StageCompleted,
    StageFailed,
    StageProgress,
    StageRetrying,
    StageSuspended,
    StageWaiting,
)
from stagewise._records import ErrorInfo, Json, RunValueRecord, StageRecord
from stagewise._run_rows import RunRows, S
from stagewise._states import RunStatus, StageTrigger


class RunFlow(RunRows):
    """The shared moves of the aggregate's decisions (see the module docstring)."""

    def _start_group(self, index: int) -> None:
        for sdef in self._plan.groups[index]:
            self._new_stage(sdef.id, index)
        self._bump(current_group=index)

    def _new_stage(self, stage_id: str, index: int) -> None:
        """A fresh PENDING row, due now, its job enqueued: at attempt 1, or after a rerun
        at the number after the stage's last one (`attempts_before`), none of those
        counted by the retry policy."""
        now = self.now
        attempt = self.record.attempts_before.get(stage_id, 0) + 1
        stage = StageRecord(
            run_id=self.record.run_id,
            stage_id=stage_id,
            group_index=index,
            status=S.PENDING,
            created_at=now,
            updated_at=now,
            due_at=now,
            enqueued_at=now,
            attempt=attempt,
            uncounted=attempt - 1,
        )
        self.stages[stage_id] = stage
        self._log.save_stage(stage)
        self._enqueue(stage_id, attempt, now)

    def _last_attempts(self, stage_ids: list[str]) -> dict[str, int]:
        """`attempts_before` for a rerun that replaces or deletes the rows of `stage_ids`:
        their next rows go on after their last attempt number, so no number is used twice
        in the run's history (the run keeps the numbers, since the rows do not survive)."""
        numbers = dict(self.record.attempts_before)
        numbers.update((s, self.stages[s].attempt) for s in stage_ids if s in self.stages)
        return numbers

    def _advance(self, outputs: Mapping[str, Json]) -> str:
        """Decide what comes next for a RUNNING run from its rows (never from what a caller
        remembers): next group, completed, failed, or nothing yet."""
        run = self.record
        if run.status is not RunStatus.RUNNING or run.current_group < 0:
            return "noop"
        plan = self._plan
        index = run.current_group
        group = [self.stages.get(s.id) for s in plan.groups[index]]
        failed = next((s for s in group if s is not None and s.status is S.FAILED), None)
        if failed is not None:
            self._fail_run(
                failed.error or ErrorInfo("StageFailed", "stage failed"), failed.stage_id
            )
            return "failed"
        if any(s is None or s.status is not S.COMPLETED for s in group):
            return "noop"
        if index + 1 < len(plan.groups):
            self._start_group(index + 1)
            return "advanced"
        return self._complete_run(outputs)

    def _complete_run(self, outputs: Mapping[str, Json]) -> str:
        plan = self._plan
        values = {s.id: self._value(s.id, outputs) for s in plan.groups[-1]}
        try:
            output = plan.validate_output(plan.group_output(len(plan.groups) - 1, values))
        except StageOutputError as exc:
            self._fail_run(ErrorInfo("StageOutputError", exc.message, retryable=False), None)
            return "failed"
        ref = self._stored_once(output, values)
        if ref is None:
            data = json.dumps(output, separators=(",", ":")).encode()
            if len(data) > self.rules.settings.inline_output_bytes:
                ref = f"runs/{self.record.run_id}/output.json"
                self._log.blob_writes.append(BlobWrite(ref, data))
        if ref is not None:
            output = None
        self._transition_run("complete", output=output, output_ref=ref, finished_at=self.now)
        self._emit(RunCompleted)
        return "completed"

    def _complete_stage(
        self, stage_id: str, trigger: StageTrigger, output: Output, outputs: Mapping[str, Json]
    ) -> None:
        stage = self._set_stage(
            stage_id,
            trigger,
            output=output.value if output.ref is None else None,
            output_ref=output.ref,
            metrics=output.metrics,
            artifacts=output.artifact_refs,
            lease_expires_at=None,
            due_at=None,
            error=None,
            finished_at=self.now,
        )
        # A large output's row keeps only its blob key; the value is in hand now, and the
        # run's own output may need it before this transaction ends (the last stage).
        self._values[stage_id] = output.value
        self._emit(StageCompleted, stage_id=stage_id, attempt=stage.attempt, metrics=output.metrics)
        self._advance(outputs)

    def _stored_once(self, output: Json, values: Mapping[str, Json]) -> str | None:
        """The blob of the last stage's output when the run's output is that very value
        (a run ending in one stage): the run refers to it rather than storing it again."""
        last = self._plan.groups[-1]
        if len(last) != 1:
            return None
        row = self.stages[last[0].id]
        if row.output_ref is None or values[last[0].id] != output:
            return None
        return row.output_ref

    def _suspend(self, stage_id: str, wait: Suspension) -> None:
        now = self.now
        until = wait.wake_at or now + timedelta(seconds=wait.max_wait)
        deadline: datetime | None = None if wait.untimed else until
        due = None if wait.untimed else min(now + timedelta(seconds=wait.poll_interval), until)
        envelope: dict[str, Json] = {
            "state": wait.state,
            "poll_interval": wait.poll_interval,
            "max_wait": wait.max_wait,
        }
        if wait.wait is not None:
            envelope["wait"] = wait.wait  # what readers (runs show) say it waits on
        stage = self._set_stage(
            stage_id,
            "suspend",
            suspend_state=envelope,
            due_at=due,
            suspend_deadline=deadline,
            lease_expires_at=None,
        )
        if wait.wait in ("sleep", "signal"):  # a durable wait: what it waits on, until when
            topic = wait.state.get("topic") if isinstance(wait.state, dict) else None
            self._emit(
                StageWaiting,
                stage_id=stage_id,
                attempt=stage.attempt,
                wait=wait.wait,
                topic=topic if isinstance(topic, str) else None,
                until=deadline,
            )
        else:
            self._emit(
                StageSuspended,
                stage_id=stage_id,
                attempt=stage.attempt,
                next_check_at=due,
                deadline=deadline,
            )
        open_ = [
            s
            for s in self.stages.values()
            if s.group_index == self.record.current_group and not s.status.is_terminal
        ]
        # The run waits on the outside world only once nothing of its group can move by
        # itself: tell that once, when the last open stage suspends.
        if all(s.status is S.SUSPENDED for s in open_):
            self._emit(RunSuspended, stage_ids=[s.stage_id for s in open_])

    def _check_again(self, stage_id: str, seconds: float) -> None:
        """A suspended stage is due again in `seconds`, but never past its deadline, where
        the last check is due; once that has passed (a check that could not be made), in
        `seconds` all the same."""
        due = self.now + timedelta(seconds=seconds)
        deadline = self.stages[stage_id].suspend_deadline
        if deadline is not None and deadline > self.now:
            due = min(due, deadline)
        self._set_stage(stage_id, due_at=due, job_id=None, lease_expires_at=None)

    def _fail_or_retry(
        self, stage_id: str, error: ErrorInfo, *, trigger: StageTrigger, at_once: bool = False
    ) -> Recorded:
        """A failed attempt: retried per the stage's policy, or the stage fails (and the
        run with it)."""
        now = self.now
        stage = self.stages[stage_id]
        attempt, counted = stage.attempt, stage.attempt - stage.uncounted
        policy = self._plan.stage(stage_id).retry
        if error.retryable and counted < policy.max_attempts:
            # Jitter derived from (run, stage, attempt), not drawn: a fake clock replays the
            # same schedule, and a decision stays a pure function of its inputs.
            key = f"{self.record.run_id}/{stage_id}/{attempt}"
            delay = 0.0 if at_once else policy.backoff(counted, key)
            at = now + timedelta(seconds=delay)
            self._set_stage(
                stage_id,
                trigger,
                attempt=attempt + 1,
                error=error,
                due_at=at,
                enqueued_at=now,
                lease_expires_at=None,
            )
            self._emit(
                StageRetrying,
                stage_id=stage_id,
                attempt=attempt,
                next_attempt=attempt + 1,
                retry_at=at,
                error=EventError.of(error),
            )
            self._enqueue(stage_id, attempt + 1, at)
            return Recorded("retry", error=error.message, retry_after=delay)
        self._fail_stage(stage_id, error)
        return Recorded("failed", error=error.message)

    def _fail_stage(self, stage_id: str, error: ErrorInfo) -> None:
        stage = self._set_stage(
            stage_id, "fail", error=error, lease_expires_at=None, finished_at=self.now
        )
        self._emit(
            StageFailed, stage_id=stage_id, attempt=stage.attempt, error=EventError.of(error)
        )
        # A retry that runs out after its run already ended (reaped while waiting) fails
        # the stage alone: the run's own end was decided before.
        if self.record.status is RunStatus.RUNNING:
            self._fail_run(error, stage_id)

    def _fail_run(self, error: ErrorInfo, stage_id: str | None) -> None:
        self._close_open_stages()
        self._transition_run("fail", error=error, finished_at=self.now)
        self._emit(RunFailed, stage_id=stage_id, error=EventError.of(error))

    def _close_open_stages(self) -> None:
        """Cancel every unfinished stage and drop the run's queued jobs. An attempt that
        was running or suspended ends here, and says so (its history has an end)."""
        for stage in list(self.stages.values()):
            if stage.status in (S.RUNNING, S.SUSPENDED):
                self._emit(StageCancelled, stage_id=stage.stage_id, attempt=stage.attempt)
            if not stage.status.is_terminal:
                self._set_stage(
                    stage.stage_id,
                    "cancel",
                    job_id=None,
                    worker_id=None,
                    lease_expires_at=None,
                    due_at=None,
                    finished_at=self.now,
                )
        # Their queued jobs would only be refused by the fence one by one: drop them now, in
        # this transaction (a transport in the same database) or right after it.
        self._log.discard_run_jobs()

    def _publish(self, stage_id: str, published: Mapping[str, Json]) -> None:
        """Write the values an attempt set (`ctx.set_event`): only with an outcome that is
        recorded as the attempt's success (completed, suspended, polled), never with a
        failure, so a failed or fenced attempt publishes nothing."""
        attempt = self.stages[stage_id].attempt
        for key, value in published.items():
            self._log.values.append(
                RunValueRecord(self.record.run_id, key, value, stage_id, attempt, self.now)
            )

    def _report(self, stage: StageRecord, reports: Reports) -> None:
        """Write what a running attempt reported: its log lines, its latest progress."""
        self._log.logs += reports.logs
        if reports.progress is not None:
            percent, message = reports.progress
            self._set_stage(stage.stage_id, progress=percent, progress_message=message)
            self._emit(
                StageProgress,
                stage_id=stage.stage_id,
                attempt=stage.attempt,
                percent=percent,
                message=message,
            )
