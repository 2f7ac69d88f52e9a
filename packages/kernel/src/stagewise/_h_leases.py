"""Handlers for a running attempt's lease: heartbeat it, or give it back."""

from __future__ import annotations

import contextlib
from datetime import timedelta

from stagewise._attempt import flush_buffer
from stagewise._commands import HeartbeatResult, JobHeartbeat, JobRelease, JobReleaseResult
from stagewise._core import Core
from stagewise._errors import LeaseLost, StagewiseError
from stagewise._h_jobs import holds_lease
from stagewise._states import RunStatus, StageStatus


async def job_heartbeat(core: Core, cmd: JobHeartbeat) -> HeartbeatResult:
    """Extend the attempt's lease and write what it reported since the last write.

    Raises:
        LeaseLost: the attempt no longer holds the stage (reaped, or another delivery won);
            code still running it in this process is told to stop, since its result
            would be refused.
    """
    job = cmd.job
    attempt = core.inflight.get(job.job_id)
    now = core.now
    expires = now + timedelta(seconds=core.settings.lease_seconds)
    cancelled = started = True
    lost: LeaseLost | None = None
    async with core.unit(cmd.type) as unit:
        scope = await unit.lock_run(job.run_id)
        stage = scope.stages.get(job.stage_id) if scope is not None else None
        if scope is None or stage is None:
            lost = LeaseLost(job.run_id, job.stage_id, job.attempt, "the stage no longer exists")
        elif stage.status is StageStatus.CANCELLED or scope.run.status is RunStatus.CANCELLED:
            expires = stage.lease_expires_at or now
        elif stage.attempt == job.attempt and stage.status in (
            StageStatus.PENDING,
            StageStatus.RETRYING,
        ):
            cancelled = started = False  # early: the job has not started its attempt yet
            expires = now
        elif not holds_lease(stage, job):
            lost = LeaseLost(
                job.run_id,
                job.stage_id,
                job.attempt,
                f"the stage is {stage.status.value} at attempt {stage.attempt}",
            )
        else:
            cancelled = False
            scope.update_stage(job.stage_id, lease_expires_at=expires)
            if attempt is not None:
                await flush_buffer(unit, scope, job, attempt.buffer.drain())
            unit.effects.hint("lease.reapStale", expires)
    if (cancelled or lost is not None) and attempt is not None:
        attempt.token._cancel()
    if lost is not None:
        raise lost
    if started and not cancelled:
        # The stage row holds the lease that counts; the delivery's lease is advisory.
        with contextlib.suppress(StagewiseError):
            await core.job_transport.extend_lease(job.job_id, lease_for=core.settings.lease_seconds)
    return HeartbeatResult(lease_expires_at=expires, cancelled=cancelled, started=started)


async def job_release(core: Core, cmd: JobRelease) -> JobReleaseResult:
    job = cmd.job
    attempt = core.inflight.get(job.job_id)
    core.handoffs.pop(job.job_id, None)  # a chained stage given back before it ran
    released = False
    async with core.unit(cmd.type) as unit:
        scope = await unit.lock_run(job.run_id)
        stage = scope.stages.get(job.stage_id) if scope is not None else None
        if scope is not None and stage is not None and holds_lease(stage, job):
            if attempt is not None:
                await flush_buffer(unit, scope, job, attempt.buffer.drain())
            now = core.now
            scope.transition_stage(
                job.stage_id,
                "release",
                job_id=None,
                worker_id=None,
                lease_expires_at=None,
                due_at=now,
                enqueued_at=now,
            )
            scope.enqueue(job.stage_id, job.attempt, now)
            unit.effects.acks.append(job.job_id)
            released = True
    if attempt is not None:
        attempt.token._cancel()
    return JobReleaseResult(released=released)
