"""Handlers for job commands: execute one delivery, heartbeat a running attempt.

Theory of operation
-------------------
`job.execute` takes exactly two transactions on the hot path:

1. *start*: lock the run, fence the delivery against the stage row (the stage must wait for
   exactly this attempt), mark it RUNNING with this job as the lease holder, emit
   StageStarted, and read what the stage needs (run input, config, earlier outputs).
2. user code runs with no transaction open;
3. *finish*: lock the run again and check the fence once more — the stage must still be
   RUNNING, for this attempt, held by this job. If it is not (the lease expired and the
   reaper moved on, the run was cancelled, another delivery won), nothing the attempt
   produced is written: the caller gets `LeaseLost` (or `cancelled`). Otherwise the outcome,
   buffered logs and progress, events, the next group's jobs and the ack of this job commit
   together, and the run advances in the same transaction.

Both are steps of the kernel's group commit (`_group.py`): concurrent starts and finishes of
one process share a transaction, each still fenced on its own stage row. Expected outcomes
(`LeaseLost`, `cancelled`) are returned by the step and raised only after commit, since the
ack of a dropped delivery must commit too.

Duplicate deliveries are harmless because the fence in (1) only lets a stage start from
PENDING/RETRYING for its current attempt: a second copy of the same job finds it RUNNING or
COMPLETED and is acked and dropped, and a COMPLETED stage never runs again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from stagewise._attempt import build_context, flush_buffer, store_blobs
from stagewise._commands import JobExecute, JobExecuteResult
from stagewise._context import AttemptBuffer
from stagewise._core import Core, Handoff, Inflight, Unit
from stagewise._errors import LeaseLost, StageOutputError
from stagewise._events import (
    StageStarted,
    StageSuspended,
)
from stagewise._execution import (
    Output,
    call_user_code,
    ensure_json,
    normalize_output,
)
from stagewise._group import Step
from stagewise._outcomes import attempt_result, complete_stage, fail_or_retry, note_suspension
from stagewise._records import JobMessage, Json, RunRecord, StageRecord
from stagewise._scope import RunScope
from stagewise._stages import Stage, Suspend, to_seconds
from stagewise._states import RunStatus, StageStatus
from stagewise._workflow import Workflow


@dataclass(frozen=True, slots=True)
class _Started:
    run: RunRecord
    stage: StageRecord
    stages: dict[str, StageRecord]


@dataclass(frozen=True, slots=True)
class _Suspended:
    state: Json
    poll_interval: float
    max_wait: float


_Outcome = Output | _Suspended | BaseException


def _result(job: JobMessage, outcome: str, **kw: Any) -> JobExecuteResult:
    return attempt_result(job.run_id, job.stage_id, job.attempt, outcome, **kw)


async def job_execute(core: Core, cmd: JobExecute) -> JobExecuteResult:
    job = cmd.job
    workflow = core.registry.get_workflow(job.workflow_id)
    stage_def = workflow.stage(job.stage_id)

    handoff = core.handoffs.pop(job.job_id, None)
    started: _Started
    if handoff is not None and handoff.worker_id == cmd.worker_id:
        # Eager dispatch: the transaction that finished the previous stage started this one
        # for this worker (see `hand_off`); the fence is in place, nothing to read again.
        stages = handoff.stages
        started = _Started(run=handoff.run, stage=stages[job.stage_id], stages=stages)
    else:
        answer = await core.group.run(cmd.type, job.run_id, _starter(cmd))
        if isinstance(answer, LeaseLost):
            raise answer
        if isinstance(answer, _Early):
            await core.job_transport.retry_at(job.job_id, answer.due_at)
            retry_after = (answer.due_at - core.now).total_seconds()
            return _result(job, "retry", retry_after=retry_after, deferred=True)
        if isinstance(answer, JobExecuteResult):
            return answer
        started = answer

    attempt = Inflight(run_id=job.run_id, stage_id=job.stage_id, attempt=job.attempt)
    core.inflight[job.job_id] = attempt
    try:
        outcome = await _run(core, job, workflow, stage_def, started, attempt)
        prepared = await store_blobs(core, job, outcome) if isinstance(outcome, Output) else outcome
        return await _finish(
            core, cmd, workflow, stage_def, prepared, attempt.buffer, queued=handoff is None
        )
    finally:
        core.inflight.pop(job.job_id, None)


@dataclass(frozen=True, slots=True)
class _Early:
    """Delivered before its attempt was due (a retry's backoff): give it back until then."""

    due_at: datetime


def _starter(cmd: JobExecute) -> Step[_Started | JobExecuteResult | LeaseLost | _Early]:
    """The start step: fence the delivery against the stage row and take the stage."""
    job = cmd.job

    async def start(
        unit: Unit, scope: RunScope | None
    ) -> _Started | JobExecuteResult | LeaseLost | _Early:
        stage = scope.stages.get(job.stage_id) if scope is not None else None
        if scope is None or stage is None:
            unit.effects.acks.append(job.job_id)
            what = "the run does not exist" if scope is None else "the stage does not exist"
            return LeaseLost(job.run_id, job.stage_id, job.attempt, what)
        if scope.run.status is RunStatus.CANCELLED or stage.status is StageStatus.CANCELLED:
            unit.effects.acks.append(job.job_id)
            return _result(job, "cancelled", error="the run was cancelled")
        if stage.status is StageStatus.COMPLETED:
            unit.effects.acks.append(job.job_id)
            return _result(job, "completed", replayed=True)
        if (
            stage.attempt != job.attempt
            or stage.status not in (StageStatus.PENDING, StageStatus.RETRYING)
            or scope.run.status is not RunStatus.RUNNING
        ):
            # A stale or duplicate delivery: someone else holds (or held) this attempt.
            if stage.job_id != job.job_id:
                unit.effects.acks.append(job.job_id)
            return LeaseLost(
                job.run_id,
                job.stage_id,
                job.attempt,
                f"the stage is {stage.status.value} at attempt {stage.attempt}",
            )
        if stage.due_at is not None and stage.due_at > scope.now:
            return _Early(stage.due_at)
        _take(unit, scope, job, cmd.worker_id)
        # A copy: later steps of the same group change the scope's stages.
        stages = dict(scope.stages)
        return _Started(run=scope.run, stage=stages[job.stage_id], stages=stages)

    return start


def _take(unit: Unit, scope: RunScope, job: JobMessage, worker_id: str) -> None:
    """Start the job's attempt for `worker_id`: RUNNING, this job holding the lease."""
    now = scope.now
    lease = now + timedelta(seconds=unit.core.settings.lease_seconds)
    stage = scope.stages[job.stage_id]
    scope.transition_stage(
        job.stage_id,
        "start",
        job_id=job.job_id,
        worker_id=worker_id,
        lease_expires_at=lease,
        started_at=stage.started_at or now,
        due_at=None,
    )
    scope.emit(StageStarted, stage_id=job.stage_id, attempt=job.attempt, worker_id=worker_id)
    unit.effects.hint("lease.reapStale", lease)


def hand_off(unit: Unit, scope: RunScope, worker_id: str) -> Handoff | None:
    """Eager dispatch: of the jobs this transaction is about to enqueue for the run (the next
    group after a stage completed, or the first when the run is claimed or created for a
    worker), start the first one that is due for `worker_id` instead. The caller hands it
    over (`Core.hand_over`) once the transaction committed.

    It saves the next stage a dequeue, a start transaction and the wake-up latency. Its job
    never reaches the transport; the stage row fences it like any other delivery, and if the
    worker dies before finishing it the lease expires and the reaper retries it.
    """
    now = scope.now
    jobs = unit.effects.jobs
    for index, job in enumerate(jobs):
        stage = scope.stages.get(job.stage_id)
        if (
            job.run_id != scope.run.run_id
            or job.available_at > now
            or stage is None
            or stage.status is not StageStatus.PENDING
            or stage.attempt != job.attempt
        ):
            continue
        del jobs[index]
        with contextlib.suppress(ValueError):  # no dequeue needs to wake for it
            unit.effects.hints.remove(("job.execute", job.available_at))
        _take(unit, scope, job, worker_id)
        # A copy of the stages: later steps of the same group change the scope's.
        return Handoff(job, worker_id, scope.run, dict(scope.stages))
    return None


async def _run(
    core: Core,
    job: JobMessage,
    workflow: Workflow,
    stage_def: Stage,
    started: _Started,
    attempt: Inflight,
) -> _Outcome:
    """Build the context and run `execute`; every failure becomes the outcome."""
    try:
        ctx = await build_context(core, workflow, stage_def, started.run, started.stages, attempt)
    except Exception as exc:  # bad input is an outcome; cancellation propagates
        return exc
    try:
        returned = await call_user_code(
            stage_def.execute,
            ctx,
            executor=core.executor,
            clock=core.clock,
            time_limit=stage_def.timeout,
            token=attempt.token,
        )
        if isinstance(returned, Suspend):
            if not stage_def.is_async_batch:
                raise StageOutputError(
                    f"stage {stage_def.id!r} returned Suspend but is not an async-batch stage "
                    "(define it with define_async_batch_stage)"
                )
            ensure_json(returned.state, f"stage {stage_def.id!r} suspend state")
            return _Suspended(
                state=returned.state,
                poll_interval=to_seconds(returned.poll_interval, "poll_interval") or 60.0,
                max_wait=to_seconds(returned.max_wait, "max_wait") or 86400.0,
            )
        return normalize_output(stage_def, returned)
    except Exception as exc:
        return exc


async def _finish(
    core: Core,
    cmd: JobExecute,
    workflow: Workflow,
    stage_def: Stage,
    outcome: _Outcome,
    buffer: AttemptBuffer,
    *,
    queued: bool = True,
) -> JobExecuteResult:
    job = cmd.job
    reports = buffer.drain()

    async def finish(
        unit: Unit, scope: RunScope | None
    ) -> tuple[JobExecuteResult, Handoff | None] | LeaseLost:
        stage = scope.stages.get(job.stage_id) if scope is not None else None
        if queued:  # a handed-off job never reached the transport: nothing to ack
            unit.effects.acks.append(job.job_id)
        if scope is None or stage is None:
            return LeaseLost(job.run_id, job.stage_id, job.attempt, "the stage no longer exists")
        if stage.status is StageStatus.CANCELLED or scope.run.status is RunStatus.CANCELLED:
            dropped = "the run was cancelled; the result is dropped"
            return _result(job, "cancelled", error=dropped), None
        if not holds_lease(stage, job):
            return LeaseLost(
                job.run_id,
                job.stage_id,
                job.attempt,
                f"the stage is {stage.status.value} at attempt {stage.attempt} "
                f"held by {stage.job_id!r}",
            )
        await flush_buffer(unit, scope, job, reports)
        result = await _record(scope, workflow, stage_def, job, outcome)
        if cmd.chain and result.outcome == "completed":
            handoff = hand_off(unit, scope, cmd.worker_id)
            if handoff is not None:
                return result.model_copy(update={"next_job": handoff.job}), handoff
        return result, None

    answer = await core.group.run(cmd.type, job.run_id, finish)
    if isinstance(answer, LeaseLost):
        raise answer
    result, handoff = answer
    if handoff is not None:
        core.hand_over([handoff])  # only now that the transaction committed
    return result


def holds_lease(stage: StageRecord, job: JobMessage) -> bool:
    return (
        stage.status is StageStatus.RUNNING
        and stage.job_id == job.job_id
        and stage.attempt == job.attempt
    )


async def _record(
    scope: RunScope, workflow: Workflow, stage_def: Stage, job: JobMessage, outcome: _Outcome
) -> JobExecuteResult:
    now = scope.now
    sid = job.stage_id
    if isinstance(outcome, Output):
        await complete_stage(scope, workflow, sid, "complete", outcome)
        return _result(job, "completed")

    if isinstance(outcome, _Suspended):
        due = now + timedelta(seconds=outcome.poll_interval)
        deadline = now + timedelta(seconds=outcome.max_wait)
        scope.transition_stage(
            sid,
            "suspend",
            suspend_state={
                "state": outcome.state,
                "poll_interval": outcome.poll_interval,
                "max_wait": outcome.max_wait,
            },
            due_at=min(due, deadline),
            suspend_deadline=deadline,
            lease_expires_at=None,
        )
        scope.emit(
            StageSuspended,
            stage_id=sid,
            attempt=job.attempt,
            next_check_at=min(due, deadline),
            deadline=deadline,
        )
        note_suspension(scope)
        scope.effects.hint("stage.pollSuspended", min(due, deadline))
        return _result(job, "suspended")

    return fail_or_retry(scope, stage_def, job.attempt, outcome)
