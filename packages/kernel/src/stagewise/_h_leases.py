"""Handlers for a running attempt's lease: heartbeat it, or give it back."""

from __future__ import annotations

import contextlib

from stagewise._commands import HeartbeatResult, JobHeartbeat, JobRelease, JobReleaseResult
from stagewise._decisions import NO_REPORTS, Beat
from stagewise._errors import LeaseLost, StagewiseError
from stagewise._runtime import Runtime


async def job_heartbeat(rt: Runtime, cmd: JobHeartbeat) -> HeartbeatResult:
    """Extend the attempt's lease and write what it reported since the last write.

    Raises:
        LeaseLost: the attempt no longer holds the stage (reaped, or another delivery won);
            code still running it in this process is told to stop, since its result
            would be refused.
    """
    job = cmd.job
    attempt = rt.inflight.get(job.job_id)
    async with rt.unit(cmd.type) as unit:
        run = await unit.run(job.run_id)
        if run is None:
            beat = Beat(unit.now, True, True, lost="the stage no longer exists")
        else:
            reports = attempt.buffer.drain() if attempt is not None else NO_REPORTS
            beat = run.heartbeat(job, reports).outcome
    if (beat.cancelled or beat.lost is not None) and attempt is not None:
        attempt.token._cancel()
    if beat.lost is not None:
        raise LeaseLost(job.run_id, job.stage_id, job.attempt, beat.lost)
    if attempt is not None and beat.started and not beat.cancelled:
        attempt.lease_until = beat.lease_expires_at
    if beat.started and not beat.cancelled:
        # The stage row holds the lease that counts; the delivery's lease is advisory.
        with contextlib.suppress(StagewiseError):
            lease = rt.settings.lease_seconds
            await rt.ports.job_transport.extend_lease(job.job_id, lease_for=lease)
    return HeartbeatResult(
        lease_expires_at=beat.lease_expires_at, cancelled=beat.cancelled, started=beat.started
    )


async def job_release(rt: Runtime, cmd: JobRelease) -> JobReleaseResult:
    job = cmd.job
    attempt = rt.inflight.get(job.job_id)
    rt.handoffs.pop(job.job_id, None)  # a chained stage given back before it ran
    async with rt.unit(cmd.type) as unit:
        run = await unit.run(job.run_id)
        reports = attempt.buffer.drain() if attempt is not None else NO_REPORTS
        released = run is not None and run.release(job, reports).outcome
    if attempt is not None:
        attempt.token._cancel()
    return JobReleaseResult(released=released)
