"""Handlers for maintenance commands: poll suspended stages, reap leases, flush the outbox.

Each one works in bounded batches and is safe to run from many workers at once: candidates
are read without locks, then each run is locked with SKIP LOCKED (a run another worker is
busy with is simply left for the next pass) and the candidate is checked again under the lock
before anything changes.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from stagewise._attempt import build_context, flush_buffer, store_blobs
from stagewise._commands import (
    LeaseReapResult,
    LeaseReapStale,
    OutboxFlush,
    OutboxFlushResult,
    PluginReplayDLQ,
    PluginReplayResult,
    StagePollResult,
    StagePollSuspended,
)
from stagewise._core import Core, Inflight, Unit
from stagewise._errors import (
    StageOutputError,
    StagewiseError,
    SuspendTimeoutError,
    TransientError,
)
from stagewise._events import EVENT_ADAPTER, EventError, StageFailed
from stagewise._execution import Output, call_user_code, error_info, normalize_output
from stagewise._flow import fail_run
from stagewise._outcomes import complete_stage, fail_or_retry
from stagewise._plugins import SINK_CONSUMER
from stagewise._records import ClaimedDelivery, Delivery, JobMessage, RunRecord, StageRecord
from stagewise._stages import NotReady, Ready, to_seconds
from stagewise._states import StageStatus

logger = logging.getLogger("stagewise.kernel")


class LeaseExpiredError(TransientError):
    """The worker running an attempt stopped heartbeating (it crashed or hung)."""


# --- stage.pollSuspended -----------------------------------------------------------------


@dataclass
class _PollClaim:
    run: RunRecord
    stage: StageRecord
    stages: dict[str, StageRecord]
    token: str
    outcome: Output | float | BaseException | None = None
    """Ready output, seconds until the next check, or the failure."""
    attempt: Inflight | None = None


async def stage_poll_suspended(core: Core, cmd: StagePollSuspended) -> StagePollResult:
    now = core.now
    claims: list[_PollClaim] = []
    async with core.unit(cmd.type) as unit:
        candidates = await unit.tx.stages.due_for_poll(now, cmd.limit)
        for run_id in sorted({c.run_id for c in candidates}):
            scope = await unit.lock_run(run_id, skip_locked=True)
            if scope is None or core.find_workflow(scope.run.workflow_id) is None:
                continue
            for cand in (c for c in candidates if c.run_id == run_id):
                stage = scope.stages.get(cand.stage_id)
                if (
                    stage is None
                    or stage.status is not StageStatus.SUSPENDED
                    or (stage.due_at is not None and stage.due_at > now)
                    or (stage.lease_expires_at is not None and stage.lease_expires_at > now)
                ):
                    continue
                token = f"poll:{cmd.poller_id}:{core.ids.new_id()}"
                scope.update_stage(
                    stage.stage_id,
                    job_id=token,
                    lease_expires_at=now + timedelta(seconds=core.settings.lease_seconds),
                )
                claims.append(
                    _PollClaim(scope.run, scope.stages[stage.stage_id], dict(scope.stages), token)
                )

    for claim in claims:
        await _check(core, claim)

    result = StagePollResult(checked=len(claims))
    counts = {"resumed": 0, "rescheduled": 0, "failed": 0}
    async with core.unit(cmd.type) as unit:
        for claim in sorted(claims, key=lambda c: (c.run.run_id, c.stage.stage_id)):
            counts[await _apply_check(core, unit, claim)] += 1
    return result.model_copy(update=counts)


async def _check(core: Core, claim: _PollClaim) -> None:
    """Call check_completion outside any transaction; store what it said on the claim."""
    stage = claim.stage
    try:
        workflow = core.registry.get_workflow(claim.run.workflow_id)
        stage_def = workflow.stage(stage.stage_id)
        envelope = stage.suspend_state or {}
        state = envelope.get("state")
        interval = float(envelope.get("poll_interval") or 60.0)
        # At the deadline check one last time: the outside work may just have finished.
        expired = stage.suspend_deadline is not None and core.now >= stage.suspend_deadline
        claim.attempt = Inflight(
            run_id=stage.run_id, stage_id=stage.stage_id, attempt=stage.attempt
        )
        ctx = await build_context(
            core, workflow, stage_def, claim.run, claim.stages, claim.attempt, resume_state=state
        )
        assert stage_def.check_completion is not None
        answer = await call_user_code(
            stage_def.check_completion,
            state,
            ctx,
            executor=core.executor,
            clock=core.clock,
            time_limit=stage_def.timeout,
            token=claim.attempt.token,
        )
        if isinstance(answer, Ready):
            output = normalize_output(stage_def, answer.output)
            stored = await store_blobs(core, _poll_job(claim), output)
            if isinstance(stored, BaseException):
                raise stored
            assert isinstance(stored, Output)
            claim.outcome = stored
        elif isinstance(answer, NotReady):
            if expired:
                raise SuspendTimeoutError(stage.stage_id, float(envelope.get("max_wait") or 0))
            claim.outcome = to_seconds(answer.next_check_in, "next_check_in") or interval
        else:
            raise StageOutputError(
                f"check_completion of stage {stage.stage_id!r} must return Ready or NotReady, "
                f"not {type(answer).__name__}"
            )
    except Exception as exc:
        claim.outcome = exc


def _poll_job(claim: _PollClaim) -> JobMessage:
    return JobMessage(
        job_id=claim.token.replace(":", "-"),
        run_id=claim.run.run_id,
        workflow_id=claim.run.workflow_id,
        stage_id=claim.stage.stage_id,
        attempt=claim.stage.attempt,
        available_at=claim.stage.updated_at,
    )


async def _apply_check(core: Core, unit: Unit, claim: _PollClaim) -> str:
    sid = claim.stage.stage_id
    scope = await unit.lock_run(claim.run.run_id)
    stage = scope.stages.get(sid) if scope is not None else None
    if (
        scope is None
        or stage is None
        or stage.status is not StageStatus.SUSPENDED
        or stage.job_id != claim.token
    ):
        return "rescheduled"  # cancelled or taken over meanwhile: nothing to record
    now = core.now
    if claim.attempt is not None:
        await flush_buffer(unit, scope, _poll_job(claim), claim.attempt.buffer.drain())
    workflow = core.registry.get_workflow(scope.run.workflow_id)
    outcome = claim.outcome
    if isinstance(outcome, Output):
        await complete_stage(scope, workflow, sid, "resume", outcome)
        return "resumed"
    if isinstance(outcome, float):
        deadline = stage.suspend_deadline or now
        due = min(now + timedelta(seconds=outcome), deadline)
        scope.update_stage(sid, due_at=due, job_id=None, lease_expires_at=None)
        scope.effects.hint("stage.pollSuspended", due)
        return "rescheduled"
    exc = outcome if isinstance(outcome, BaseException) else StagewiseError("no outcome")
    error = error_info(exc, retryable=False)
    scope.transition_stage(
        sid, "fail", error=error, job_id=None, lease_expires_at=None, finished_at=now
    )
    scope.emit(StageFailed, stage_id=sid, attempt=stage.attempt, error=EventError.of(error))
    fail_run(scope, error, sid)
    return "failed"


# --- lease.reapStale ---------------------------------------------------------------------


async def lease_reap_stale(core: Core, cmd: LeaseReapStale) -> LeaseReapResult:
    now = core.now
    retried = failed = requeued = 0
    async with core.unit(cmd.type) as unit:
        expired = await unit.tx.stages.expired_leases(now, cmd.limit, worker_id=cmd.worker_id)
        for run_id in sorted({s.run_id for s in expired}):
            scope = await unit.lock_run(run_id, skip_locked=True)
            workflow = core.find_workflow(scope.run.workflow_id) if scope is not None else None
            if scope is None or workflow is None:
                continue
            for cand in (c for c in expired if c.run_id == run_id):
                stage = scope.stages.get(cand.stage_id)
                if stage is None or stage.status is not StageStatus.RUNNING:
                    continue
                if stage.job_id != cand.job_id:
                    continue  # started again meanwhile
                stale = stage.lease_expires_at is not None and stage.lease_expires_at <= now
                if not stale and (cmd.worker_id is None or stage.worker_id != cmd.worker_id):
                    continue
                if stage.job_id is not None:
                    unit.effects.acks.append(stage.job_id)
                error = LeaseExpiredError(
                    f"worker {stage.worker_id!r} stopped heartbeating attempt {stage.attempt} "
                    f"of stage {stage.stage_id!r}"
                )
                # A worker taking back its own attempts after a restart: they stopped because
                # the process died, not because the stage failed, so the retry (which still
                # counts as an attempt) is due at once rather than after the backoff.
                own = cmd.worker_id is not None and stage.worker_id == cmd.worker_id
                outcome = fail_or_retry(
                    scope,
                    workflow.stage(stage.stage_id),
                    stage.attempt,
                    error,
                    trigger="expire",
                    at_once=own,
                )
                if outcome.outcome == "retry":
                    retried += 1
                else:
                    failed += 1
        if not unit.joined:
            requeued = await _requeue_lost(core, unit, now)
        await unit.tx.idempotency.purge_expired(now)
    released = await core.job_transport.release_expired(worker_id=cmd.worker_id)
    return LeaseReapResult(
        retried=retried, failed=failed, released_jobs=released, requeued=requeued
    )


async def _requeue_lost(core: Core, unit: Unit, now: datetime) -> int:
    """Enqueue again the due stages whose job was handed to an external transport long ago
    without starting: that delivery may be lost (a crash right after commit). A duplicate is
    harmless: the start fence lets only one delivery of an attempt run."""
    before = now - timedelta(seconds=core.settings.requeue_after)
    lost = await unit.tx.stages.unstarted(before, now, 100)
    count = 0
    for run_id in sorted({s.run_id for s in lost}):
        scope = await unit.lock_run(run_id, skip_locked=True)
        if scope is None:
            continue
        for cand in (c for c in lost if c.run_id == run_id):
            stage = scope.stages.get(cand.stage_id)
            if stage is None or stage.status not in (StageStatus.PENDING, StageStatus.RETRYING):
                continue
            if stage.enqueued_at is None or stage.enqueued_at >= before:
                continue
            scope.update_stage(stage.stage_id, enqueued_at=now)
            scope.enqueue(stage.stage_id, stage.attempt, now)
            count += 1
    return count


# --- outbox.flush ------------------------------------------------------------------------


async def outbox_flush(core: Core, cmd: OutboxFlush) -> OutboxFlushResult:
    now = core.now
    claimer = f"{cmd.flusher_id}:{core.ids.new_id()}"
    async with core.persistence.transaction() as tx:
        claimed = await tx.outbox.claim(
            now=now,
            limit=cmd.limit,
            claimer=claimer,
            claim_until=now + timedelta(seconds=core.settings.lease_seconds),
        )
    if not claimed:
        return OutboxFlushResult()

    groups: dict[tuple[str, str], list[ClaimedDelivery]] = defaultdict(list)
    for item in claimed:
        groups[(item.delivery.consumer, item.delivery.run_id)].append(item)
    updates: list[Delivery] = []
    delivered = failed = dead = 0
    for items in groups.values():
        blocked = False
        for item in sorted(items, key=lambda i: i.delivery.seq):
            d = replace(item.delivery, claimed_by=None, claimed_until=None)
            if blocked:
                updates.append(d)  # per-run order: wait behind the failed one
                continue
            try:
                await _deliver(core, d.consumer, item)
            except Exception as exc:
                attempts = d.attempts + 1
                message = f"{type(exc).__name__}: {exc}"[:2000]
                if attempts >= core.settings.outbox_max_attempts:
                    logger.error(
                        "dead-lettered event %s for %s: %s", d.event_id, d.consumer, message
                    )
                    updates.append(replace(d, status="dead", attempts=attempts, last_error=message))
                    dead += 1
                    continue  # a dead letter no longer holds the run's later events back
                delay = min(
                    core.settings.outbox_max_backoff,
                    core.settings.outbox_initial_backoff * 2 ** (attempts - 1),
                )
                updates.append(
                    replace(
                        d,
                        attempts=attempts,
                        last_error=message,
                        next_attempt_at=core.now + timedelta(seconds=delay),
                    )
                )
                failed += 1
                blocked = True
            else:
                updates.append(replace(d, status="delivered", attempts=d.attempts + 1))
                delivered += 1
    async with core.persistence.transaction() as tx:
        await tx.outbox.update(updates)
    retry_times = [
        d.next_attempt_at for d in updates if d.status == "pending" and d.next_attempt_at
    ]
    if retry_times:
        await core.scheduler.wake("outbox.flush", min(retry_times))
    return OutboxFlushResult(delivered=delivered, failed=failed, dead_lettered=dead)


async def _deliver(core: Core, consumer: str, item: ClaimedDelivery) -> None:
    event = EVENT_ADAPTER.validate_python(item.event.payload)
    if consumer == SINK_CONSUMER:
        await core.event_sink.publish(event)
        return
    plugin = core.plugins.by_consumer(consumer)
    if plugin is None:
        raise StagewiseError(f"no plugin is registered for consumer {consumer!r}")
    await plugin.deliver(event)


async def plugin_replay_dlq(core: Core, cmd: PluginReplayDLQ) -> PluginReplayResult:
    consumer = None
    if cmd.plugin_id is not None:
        consumer = SINK_CONSUMER if cmd.plugin_id == SINK_CONSUMER else f"plugin:{cmd.plugin_id}"
    now = core.now
    async with core.persistence.transaction() as tx:
        count = await tx.outbox.replay_dead(consumer=consumer, event_ids=cmd.event_ids, now=now)
    if count:
        await core.scheduler.wake("outbox.flush", now)
    return PluginReplayResult(replayed=count)
