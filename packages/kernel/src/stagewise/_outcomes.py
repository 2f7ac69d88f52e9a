"""Recording an attempt's outcome: a stage completed (and the run advances), failed or is
retried, or every open stage of a group is waiting. Shared by `job.execute` and the
maintenance commands that finish attempts (`stage.pollSuspended`, `lease.reapStale`), always
inside the caller's transaction with the run locked."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from stagewise._commands import JobExecuteResult
from stagewise._events import EventError, RunSuspended, StageCompleted, StageFailed, StageRetrying
from stagewise._execution import Output, error_info, is_retryable
from stagewise._flow import advance, fail_run
from stagewise._scope import RunScope
from stagewise._stages import Stage
from stagewise._states import RunStatus, StageStatus
from stagewise._workflow import Workflow


def attempt_result(
    run_id: str, stage_id: str, attempt: int, outcome: str, **kw: Any
) -> JobExecuteResult:
    return JobExecuteResult(
        outcome=outcome,
        run_id=run_id,
        stage_id=stage_id,
        attempt=attempt,
        **kw,
    )


async def complete_stage(
    scope: RunScope,
    workflow: Workflow,
    stage_id: str,
    trigger: Literal["complete", "resume"],
    outcome: Output,
) -> None:
    """Record a stage's output (inline, or the blob key it was stored under), emit
    stage.completed and advance the run, in the caller's transaction."""
    stage = scope.transition_stage(
        stage_id,
        trigger,
        output=outcome.value if outcome.ref is None else None,
        output_ref=outcome.ref,
        metrics=outcome.metrics,
        artifacts=outcome.artifact_refs,
        lease_expires_at=None,
        due_at=None,
        error=None,
        finished_at=scope.now,
    )
    scope.emit(StageCompleted, stage_id=stage_id, attempt=stage.attempt, metrics=outcome.metrics)
    await advance(scope, workflow)


def fail_or_retry(
    scope: RunScope,
    stage_def: Stage,
    attempt: int,
    exc: BaseException,
    *,
    trigger: Literal["retry", "expire"] = "retry",
    at_once: bool = False,
) -> JobExecuteResult:
    """Record a failed attempt: retry it per the stage's policy, or fail the stage (the run
    fails with it, in this same transaction)."""
    now = scope.now
    sid = stage_def.id
    retryable = is_retryable(stage_def, exc)
    error = error_info(exc, retryable=retryable)
    run_id = scope.run.run_id
    if retryable and attempt < stage_def.retry.max_attempts:
        delay = 0.0 if at_once else stage_def.retry.backoff(attempt, f"{run_id}/{sid}/{attempt}")
        at = now + timedelta(seconds=delay)
        scope.transition_stage(
            sid,
            trigger,
            attempt=attempt + 1,
            error=error,
            due_at=at,
            enqueued_at=now,
            lease_expires_at=None,
        )
        scope.emit(
            StageRetrying,
            stage_id=sid,
            attempt=attempt,
            next_attempt=attempt + 1,
            retry_at=at,
            error=EventError.of(error),
        )
        scope.enqueue(sid, attempt + 1, at)
        return attempt_result(run_id, sid, attempt, "retry", error=error.message, retry_after=delay)
    scope.transition_stage(sid, "fail", error=error, lease_expires_at=None, finished_at=now)
    scope.emit(StageFailed, stage_id=sid, attempt=attempt, error=EventError.of(error))
    if scope.run.status is RunStatus.RUNNING:
        fail_run(scope, error, sid)
    return attempt_result(run_id, sid, attempt, "failed", error=error.message)


def note_suspension(scope: RunScope) -> None:
    """Emit RunSuspended when every unfinished stage of the current group is waiting."""
    group = scope.group(scope.run.current_group)
    open_ = [s for s in group if not s.status.is_terminal]
    if open_ and all(s.status is StageStatus.SUSPENDED for s in open_):
        scope.emit(RunSuspended, stage_ids=[s.stage_id for s in open_])
