"""Handlers for maintenance: poll suspended stages, reap expired leases.

Theory of operation
-------------------
Maintenance runs on every worker at once, in bounded batches, and must never hurt a run it
races with. Each pass has the same shape:

1. **read candidates without locks** (`due_for_poll`, `expired_leases`, `unstarted`): a
   cheap indexed read, possibly stale by the time it returns;
2. **lock their runs with SKIP LOCKED**, in one statement: a run another worker is busy
   with (finishing the very stage we would reap, say) is simply left for the next pass,
   so two maintainers never wait on each other and never act on the same run at once;
3. **let the aggregate check the candidate again under the lock** and decide: the stage may
   have been started again, finished, or cancelled since step 1, and the decision methods
   (`Run.expire_lease`, `Run.claim_poll`, `Run.requeue`) skip it then. A stale candidate
   therefore costs a read, never a wrong change.

A run whose workflow this process does not know is skipped (and logged once): a worker
that knows it will handle it, and no batch fails for one run.

`stage.pollSuspended` calls user code (`check_completion`), so it takes two transactions
around it, like `job.execute`: the first claims due stages (each held by a poll token with
a lease, which also keeps other pollers off it), the calls run with no transaction open,
and the second records what they said, fenced by the token: a stage cancelled or claimed
by another poller meanwhile is left alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from stagewise._attempt import build_context, load_blobs, store_blobs
from stagewise._commands import (
    LeaseReapResult,
    LeaseReapStale,
    RunPurge,
    StagePollResult,
    StagePollSuspended,
)
from stagewise._decisions import Output, StartedAttempt
from stagewise._errors import (
    InvalidInputError,
    StageOutputError,
    StagewiseError,
    SuspendTimeoutError,
)
from stagewise._execution import call_user_code, error_info, normalize_output
from stagewise._h_purge import run_purge
from stagewise._records import ErrorInfo, JobMessage, StageRecord
from stagewise._run_maintenance import Reclaim
from stagewise._runtime import Inflight, Runtime
from stagewise._stages import NotReady, Ready, to_seconds
from stagewise._unit import UnitOfWork
from stagewise._workers import presumed_gone

logger = logging.getLogger("stagewise.maintenance")

# --- stage.pollSuspended -----------------------------------------------------------------


@dataclass
class _PollClaim:
    job: JobMessage
    """The poll as a delivery: its id is the token that holds the stage."""
    started: StartedAttempt
    attempt: Inflight
    outcome: Output | float | ErrorInfo | None = None
    """Ready output, seconds until the next check, or the failure."""


async def stage_poll_suspended(rt: Runtime, cmd: StagePollSuspended) -> StagePollResult:
    claims: list[_PollClaim] = []
    async with rt.unit(cmd.type) as unit:
        candidates = await unit.tx.stages.due_for_poll(unit.now, cmd.limit)
        # When the next wait is due, whichever process suspended it: a hint for this
        # host's timer, so that a sleep wakes on time after a restart, or on a worker
        # other than the one that put it to sleep (the commit's own hint reached only
        # that one's scheduler).
        next_due = await unit.tx.stages.next_poll_at(unit.now)
        await unit.lock([c.run_id for c in candidates], skip_locked=True)
        for cand in candidates:
            run = unit.runs.get(cand.run_id)
            if run is None or rt.left_to_others(run):
                continue
            token = f"poll:{cmd.poller_id}:{unit.rules.new_id()}"
            job = _poll_job(cand, run.record.workflow_id, token)
            started = run.claim_poll(job).outcome
            if started is not None:
                inflight = Inflight(run_id=job.run_id, stage_id=job.stage_id, attempt=job.attempt)
                claims.append(_PollClaim(job, started, inflight))

    for claim in claims:
        claim.outcome = await _check(rt, claim)

    counts = {"resumed": 0, "rescheduled": 0, "failed": 0}
    async with rt.unit(cmd.type) as unit:
        await unit.lock([c.job.run_id for c in claims])
        for claim in sorted(claims, key=lambda c: (c.job.run_id, c.job.stage_id)):
            counts[await _record(rt, unit, claim)] += 1
    if next_due is not None:
        await rt.wake(cmd.type, next_due)
    return StagePollResult(checked=len(claims), next_due_at=next_due, **counts)


def _poll_job(stage: StageRecord, workflow_id: str, token: str) -> JobMessage:
    return JobMessage(
        job_id=token,
        run_id=stage.run_id,
        workflow_id=workflow_id,
        stage_id=stage.stage_id,
        attempt=stage.attempt,
        available_at=stage.updated_at,
    )


_TRY_AGAIN_IN = 2.0
"""Seconds until a poll that the kernel's own I/O failed is tried again."""


async def _check(rt: Runtime, claim: _PollClaim) -> Output | float | ErrorInfo:
    """Call check_completion outside any transaction: what it said, or its failure.

    What fails the stage is the stage's: its check raising or returning something else, an
    input or output that does not validate. What fails around it is not: the blob store
    failing to give the earlier outputs or to take the ready one is an outage, and the
    stage is checked again shortly, as after a crash (it said nothing yet)."""
    started, now = claim.started, rt.now
    stage = started.stages[claim.job.stage_id]
    workflow = rt.registry.get_workflow(started.run.workflow_id, started.run.workflow_version)
    stage_def = workflow.stage(stage.stage_id)
    envelope = stage.suspend_state or {}
    state = envelope.get("state")
    interval = float(envelope.get("poll_interval") or 60.0)
    # At the deadline check one last time: the outside work may just have finished.
    expired = stage.suspend_deadline is not None and now >= stage.suspend_deadline
    try:
        ctx = await build_context(
            rt.ports.blob_store,
            rt.ports.clock.now,
            workflow,
            stage_def,
            started,
            token=claim.attempt.token,
            buffer=claim.attempt.buffer,
            resume_state=state,
        )
    except InvalidInputError as exc:  # an input or config that does not validate
        return error_info(exc, retryable=False)
    except Exception as exc:
        return _outage(claim, exc)
    try:
        assert stage_def.check_completion is not None
        answer = await call_user_code(
            stage_def.check_completion,
            state,
            ctx,
            executor=rt.executor,
            clock=rt.ports.clock,
            time_limit=stage_def.timeout,
            token=claim.attempt.token,
        )
        if isinstance(answer, Ready):
            output = normalize_output(stage_def, answer.output)
        elif not isinstance(answer, NotReady):
            raise StageOutputError(
                f"check_completion of stage {stage.stage_id!r} must return Ready or NotReady, "
                f"not {type(answer).__name__}"
            )
        elif expired:
            raise SuspendTimeoutError(stage.stage_id, float(envelope.get("max_wait") or 0))
        else:
            return to_seconds(answer.next_check_in, "next_check_in") or interval
    except Exception as exc:
        return error_info(exc, retryable=False)
    try:
        stored = await store_blobs(rt.ports.blob_store, rt.settings, claim.job, output)
    except Exception as exc:
        return _outage(claim, exc)
    return error_info(stored, retryable=False) if isinstance(stored, BaseException) else stored


def _outage(claim: _PollClaim, exc: Exception) -> float:
    logger.warning(
        "could not check suspended stage %r of run %s (%s: %s); checking again in %.0fs",
        claim.job.stage_id,
        claim.job.run_id,
        type(exc).__name__,
        exc,
        _TRY_AGAIN_IN,
    )
    return _TRY_AGAIN_IN


async def _record(rt: Runtime, unit: UnitOfWork, claim: _PollClaim) -> str:
    run = unit.runs.get(claim.job.run_id)
    if run is None:
        return "rescheduled"
    outcome = claim.outcome
    if outcome is None:
        outcome = error_info(StagewiseError("no outcome"), retryable=False)
    sid = claim.job.stage_id
    refs = run.refs_to_finish(sid) if isinstance(outcome, Output) else []
    outputs = await load_blobs(rt.ports.blob_store, refs)
    reports = claim.attempt.buffer.drain()
    published = claim.attempt.buffer.published
    return run.record_poll(claim.job, outcome, reports, outputs, published).outcome


# --- lease.reapStale ---------------------------------------------------------------------


async def lease_reap_stale(rt: Runtime, cmd: LeaseReapStale) -> LeaseReapResult:
    retried = failed = requeued = timed_out = 0
    async with rt.unit(cmd.type) as unit:
        now = unit.now
        gone = await _gone(unit, cmd.observer)
        holders = [*gone, *([cmd.worker_id] if cmd.worker_id else [])]
        expired = await unit.tx.stages.expired_leases(now, cmd.limit, holders=holders)
        late = await unit.tx.runs.past_deadline(now, cmd.limit)
        await unit.lock([s.run_id for s in expired] + [r.run_id for r in late], skip_locked=True)
        for cand in expired:
            run = unit.runs.get(cand.run_id)
            if run is None or rt.left_to_others(run):
                continue
            why: Reclaim = "lease"
            if cand.worker_id is not None and cand.worker_id == cmd.worker_id:
                why = "stopped" if cmd.stopping else "restarted"
            elif cand.worker_id in gone:
                why = "gone"
            decided = run.expire_lease(cand.stage_id, cand.job_id, why=why).outcome
            retried += decided == "retry"
            failed += decided == "failed"
        for candidate in late:
            # Any worker may enforce a deadline, even one without the run's workflow
            # version: failing a run and closing its stages needs no plan.
            late_run = unit.runs.get(candidate.run_id)
            timed_out += late_run is not None and late_run.expire_deadline().outcome
        # The next deadline, whoever created its run: a hint for this host's timer, so a
        # deadline is enforced on time after a restart or on another worker.
        next_deadline = await unit.tx.runs.next_deadline(now)
        if not unit.joined:
            requeued = await _requeue_lost(rt, unit)
        await unit.tx.idempotency.purge_expired(now)
        await unit.tx.workers.prune(now - timedelta(seconds=rt.settings.worker_retention))
    if next_deadline is not None:
        await rt.wake(cmd.type, next_deadline)
    released = await rt.ports.job_transport.release_expired(worker_id=cmd.worker_id)
    purged = await _apply_retention(rt) if cmd.worker_id is None else 0
    return LeaseReapResult(
        retried=retried,
        failed=failed,
        released_jobs=released,
        requeued=requeued,
        purged=purged,
        timed_out=timed_out,
    )


async def _apply_retention(rt: Runtime) -> int:
    """One batch of `run.purge` for the runs past `settings.retention` (none when unset): a
    pass of maintenance deletes what one short transaction may, and the next pass goes on,
    so a backlog drains without ever holding locks long (see `_h_purge`)."""
    retention = rt.settings.retention
    if retention is None:
        return 0
    cutoff = rt.ports.clock.now() - timedelta(seconds=retention)
    result = await run_purge(rt, RunPurge(finished_before=cutoff, limit=rt.settings.purge_batch))
    if result.purged:
        logger.info(
            "purged %d run(s) finished before %s (retention %.0fs)%s",
            result.purged,
            cutoff.isoformat(),
            retention,
            "; more to go" if result.more else "",
        )
    return result.purged


async def _gone(unit: UnitOfWork, observer: str | None) -> list[str]:
    """The workers `observer` presumes gone (none without an observer, or one that has not
    beaten: it cannot tell an outage from a death, see `_workers`)."""
    if observer is None:
        return []
    workers = await unit.tx.workers.find()
    me = next((w for w in workers if w.worker_id == observer), None)
    if me is None:
        return []
    return [w.worker_id for w in workers if presumed_gone(w, me, unit.now)]


async def _requeue_lost(rt: Runtime, unit: UnitOfWork) -> int:
    """Enqueue again the due stages whose job was handed to an outside transport long ago
    without starting: that delivery may be lost (a crash right after commit). A duplicate is
    harmless: the start fence lets only one delivery of an attempt run."""
    before = unit.now - timedelta(seconds=rt.settings.requeue_after)
    lost = await unit.tx.stages.unstarted(before, unit.now, 100)
    await unit.lock([s.run_id for s in lost], skip_locked=True)
    count = 0
    for cand in lost:
        run = unit.runs.get(cand.run_id)
        if run is not None and run.requeue(cand.stage_id, before).outcome:
            count += 1
    return count
