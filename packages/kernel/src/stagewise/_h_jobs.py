"""The handler of `job.execute`: start one delivered attempt, run its code, record it.

Theory of operation
-------------------
`job.execute` takes exactly two transactions on the hot path:

1. *start*: lock the run and ask its aggregate to let this delivery take the stage
   (`Run.begin_attempt`: the stage must wait for exactly this attempt; RUNNING, this job
   holding the lease, `stage.started`);
2. user code runs with no transaction open;
3. *finish*: lock the run again and record the outcome (`Run.record_attempt`), which
   checks the fence once more: still RUNNING, for this attempt, held by this job. If not
   (the lease expired and the reaper moved on, the run was cancelled, another delivery
   won), nothing the attempt produced is written and the caller gets `LeaseLost` (or
   `cancelled`). Otherwise the outcome, its logs and progress, events, the next group's
   jobs and the ack of this delivery commit together, and the run advances in the same
   transaction.

A finish that fails for a transient reason (the database restarting) is tried again with
the same outcome while the attempt's lease holds (`_while_leased`), and a try whose commit
went through unheard is answered with what it recorded (`Run.record_attempt` recognises its
own finish): an outage shorter than the lease runs no stage body again.

Both are steps of the kernel's group commit (`_group.py`): concurrent starts and finishes
in one process share a transaction, each still fenced on its own stage row. Expected
refusals are returned by the step and raised only after commit, since the ack of a dropped
delivery must commit too.

Eager dispatch (`hand_off`, also used when a run is claimed or created for a worker): the
transaction that makes a stage ready may start it for the worker at hand instead of
enqueueing its job. The job never reaches the transport; the stage row fences it like any
delivery, and if the worker dies first its lease expires and the reaper retries it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from stagewise._attempt import build_context, load_blobs, store_blobs
from stagewise._commands import JobExecute, JobExecuteResult
from stagewise._decisions import Output, Recorded, Start, StartedAttempt, Suspension
from stagewise._errors import LeaseLost, StageOutputError, TransientError
from stagewise._execution import (
    call_user_code,
    ensure_json,
    error_info,
    is_retryable,
    normalize_output,
)
from stagewise._group import Step
from stagewise._h_streams import stream_writer
from stagewise._records import ErrorInfo, JobMessage, SignalRecord, StreamItemRecord
from stagewise._run import Run
from stagewise._runtime import Inflight, Runtime
from stagewise._stages import Stage, Suspend, to_seconds
from stagewise._states import StageStatus
from stagewise._unit import UnitOfWork
from stagewise._waits import wake_time
from stagewise._workflow import Workflow

Outcome = Output | Suspension | ErrorInfo
T = TypeVar("T")

FINISH_RETRY_FIRST = 0.1
FINISH_RETRY_CAP = 2.0
"""Seconds between tries of a finish that failed for a transient reason: doubling from the
first, at most the cap (a database back from a restart is found within two seconds)."""

logger = logging.getLogger("stagewise.kernel")


def _result(job: JobMessage, outcome: str, **kw: Any) -> JobExecuteResult:
    return JobExecuteResult(
        outcome=outcome, run_id=job.run_id, stage_id=job.stage_id, attempt=job.attempt, **kw
    )


async def job_execute(rt: Runtime, cmd: JobExecute) -> JobExecuteResult:
    job = cmd.job
    # Only the run's own version may run it (a job of another version is refused before
    # anything is read: a worker that has that version takes it).
    workflow = rt.registry.get_workflow(job.workflow_id, job.workflow_version)
    stage_def = workflow.stage(job.stage_id)

    handed = rt.handoffs.pop(job.job_id, None)
    if handed is not None and handed.worker_id == cmd.worker_id:
        # Started for this worker by the transaction that made it ready (`hand_off`): the
        # fence is in place and the snapshot is what committed; nothing to read again.
        started = handed
    else:
        handed = None
        start = await rt.group.run(cmd.type, job.run_id, _starter(cmd))
        if start.started is None:
            return await _not_started(rt, job, start)
        started = start.started

    inflight = Inflight(
        run_id=job.run_id,
        stage_id=job.stage_id,
        attempt=job.attempt,
        lease_until=started.stages[job.stage_id].lease_expires_at,
    )
    rt.inflight[job.job_id] = inflight
    try:
        ran = await _run(rt, workflow, stage_def, started, inflight)
        if isinstance(ran, Output):
            ran = await store_blobs(rt.ports.blob_store, rt.settings, job, ran)
        outcome = (
            error_info(ran, retryable=is_retryable(stage_def, ran))
            if isinstance(ran, BaseException)
            else ran
        )
        return await _finish(rt, cmd, outcome, inflight, queued=handed is None)
    finally:
        rt.inflight.pop(job.job_id, None)


def _starter(cmd: JobExecute) -> Step[Start]:
    """The start step: the aggregate fences the delivery and lets it take the stage."""
    job = cmd.job

    async def start(unit: UnitOfWork, run: Run | None) -> Start:
        if run is None:
            unit.acks.append(job.job_id)
            return Start(refused="lost", reason="the run does not exist")
        return run.begin_attempt(job, cmd.worker_id).outcome

    return start


async def _not_started(rt: Runtime, job: JobMessage, start: Start) -> JobExecuteResult:
    """The answer for a delivery that did not take its stage (its transaction committed)."""
    if start.refused == "cancelled":
        return _result(job, "cancelled", error=start.reason)
    if start.refused == "completed":
        return _result(job, "completed", replayed=True)
    if start.not_before is not None:
        # Delivered before its backoff ended: given back until then, not a failed attempt.
        await rt.ports.job_transport.retry_at(job.job_id, start.not_before)
        retry_after = (start.not_before - rt.now).total_seconds()
        return _result(job, "retry", retry_after=retry_after, deferred=True)
    raise LeaseLost(job.run_id, job.stage_id, job.attempt, start.reason)


def hand_off(
    unit: UnitOfWork, run: Run, worker_id: str, jobs: Sequence[JobMessage]
) -> StartedAttempt | None:
    """Eager dispatch: of `jobs`, just decided for `run`, start the first one that is due
    for `worker_id` instead of enqueueing it (see the module docstring). The caller hands it
    over (`Runtime.hand_over`) once the transaction committed."""
    for job in jobs:
        stage = run.stages.get(job.stage_id)
        if (
            job.available_at > unit.now
            or stage is None
            or stage.status is not StageStatus.PENDING
            or stage.attempt != job.attempt
        ):
            continue
        started = run.begin_attempt(job, worker_id).outcome.started
        if started is not None:
            unit.withdraw(job)
            return started
    return None


async def _run(
    rt: Runtime, workflow: Workflow, stage_def: Stage, started: StartedAttempt, inflight: Inflight
) -> Output | Suspension | BaseException:
    """Build the context and run `execute`; every failure becomes the outcome."""
    try:
        ctx = await build_context(
            rt.ports.blob_store,
            rt.ports.clock.now,
            workflow,
            stage_def,
            started,
            token=inflight.token,
            buffer=inflight.buffer,
            streams=stream_writer(rt, started.job),
        )
    except Exception as exc:  # bad input is an outcome; cancellation propagates
        return exc
    try:
        returned = await call_user_code(
            stage_def.execute,
            ctx,
            executor=rt.executor,
            clock=rt.ports.clock,
            time_limit=stage_def.timeout,
            token=inflight.token,
        )
        if isinstance(returned, Suspend):
            if not stage_def.is_async_batch:
                raise StageOutputError(
                    f"stage {stage_def.id!r} returned Suspend but is not an async-batch stage "
                    "(define it with define_async_batch_stage)"
                )
            ensure_json(returned.state, f"stage {stage_def.id!r} suspend state")
            return Suspension(
                state=returned.state,
                poll_interval=to_seconds(returned.poll_interval, "poll_interval") or 60.0,
                max_wait=to_seconds(returned.max_wait, "max_wait") or 86400.0,
                wake_at=wake_time(stage_def, returned),
                wait=stage_def.wait,
            )
        return normalize_output(stage_def, returned)
    except Exception as exc:
        return exc


async def _finish(
    rt: Runtime, cmd: JobExecute, outcome: Outcome, inflight: Inflight, *, queued: bool
) -> JobExecuteResult:
    """The finish step: the aggregate fences the attempt again and records its outcome."""
    job = cmd.job
    reports = inflight.buffer.drain()  # before the step: a step tried twice writes them once

    async def finish(unit: UnitOfWork, run: Run | None) -> tuple[Recorded, StartedAttempt | None]:
        if queued:  # a handed-off job never reached the transport: nothing to ack
            unit.acks.append(job.job_id)
        if run is None:
            return Recorded("lost", error="the stage no longer exists"), None
        mailbox = await _mailbox(unit, job, outcome)
        completes = isinstance(outcome, Output) or bool(mailbox)
        refs = run.refs_to_finish(job.stage_id) if completes else []
        outputs = await load_blobs(rt.ports.blob_store, refs)
        buffer = inflight.buffer
        closing = await _tails(unit, job, outcome, buffer.closing)
        decision = run.record_attempt(
            job, outcome, reports, outputs, mailbox, buffer.published, closing
        )
        handoff = None
        if cmd.chain and decision.outcome.replayed:
            # The try that committed may have handed the next stage to this worker.
            handoff = run.handed_unheard(cmd.worker_id, {*rt.inflight, *rt.handoffs})
        elif cmd.chain and decision.outcome.outcome == "completed":
            handoff = hand_off(unit, run, cmd.worker_id, decision.changes.jobs)
        return decision.outcome, handoff

    recorded, handoff = await _while_leased(
        rt, inflight, lambda: rt.group.run(cmd.type, job.run_id, finish)
    )
    if recorded.outcome == "lost":
        raise LeaseLost(job.run_id, job.stage_id, job.attempt, recorded.error or "")
    result = _result(
        job,
        recorded.outcome,
        error=recorded.error,
        retry_after=recorded.retry_after,
        replayed=recorded.replayed,
    )
    if handoff is None:
        return result
    rt.hand_over([handoff])  # only now that the transaction committed
    return result.model_copy(update={"next_job": handoff.job})


async def _tails(
    unit: UnitOfWork, job: JobMessage, outcome: Outcome, keys: list[str]
) -> dict[str, StreamItemRecord | None]:
    """The last items of the streams the attempt closed, read under the run's lock (a
    failed attempt closes nothing: no read)."""
    if isinstance(outcome, ErrorInfo) or not keys:
        return {}
    return {key: await unit.tx.streams.tail(job.run_id, key) for key in keys}


async def _mailbox(unit: UnitOfWork, job: JobMessage, outcome: Outcome) -> list[SignalRecord]:
    """For a signal wait beginning: the run's signals on its topic still in the mailbox
    (read under the run's lock, so a signal sent a moment ago is either here or finds the
    wait suspended; `_run_signals`)."""
    if not isinstance(outcome, Suspension) or outcome.wait != "signal":
        return []
    assert isinstance(outcome.state, dict)
    return await unit.tx.signals.pending(job.run_id, outcome.state["topic"])


async def _while_leased(rt: Runtime, inflight: Inflight, step: Callable[[], Awaitable[T]]) -> T:
    """`step` (the finish), tried again with backoff when it fails for a transient reason
    (the database restarting, a lost connection) for as long as the attempt's lease holds.

    Why: the outcome is in hand and nobody else may take the stage before the lease ends,
    so giving up would only throw away work that the reaper then runs again. Trying again
    is safe even when the failed try did commit unheard: the aggregate recognises its own
    finish and answers it unchanged (`recorded_by`). Past the lease, the error stands; the
    reaper retries the attempt and says why.
    """
    for tries in itertools.count():
        try:
            return await step()
        except TransientError as exc:
            wait = min(FINISH_RETRY_CAP, FINISH_RETRY_FIRST * 2**tries)
            until = inflight.lease_until
            if until is None or rt.now + timedelta(seconds=wait) >= until:
                raise
            if tries == 0:
                logger.warning(
                    "could not record attempt %d of stage %r of run %s (%s); trying again "
                    "while its lease holds (until %s)",
                    inflight.attempt,
                    inflight.stage_id,
                    inflight.run_id,
                    exc,
                    until.isoformat(timespec="seconds"),
                )
            await rt.ports.clock.sleep(wait)
    raise AssertionError("unreachable")
