"""Handlers for run commands: create, claim, transition, cancel, rerun.

Each one locks the runs it needs, lets their aggregates decide (`_run.Run`) and returns
what they decided once it committed. What is checked before the transaction (input,
config, sizes) is checked there so that a refused request writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta

from stagewise._attempt import load_blobs
from stagewise._commands import (
    RunCancel,
    RunCancelResult,
    RunClaimPending,
    RunClaimPendingResult,
    RunCreate,
    RunCreateResult,
    RunRerunFrom,
    RunRerunResult,
    RunTransition,
    RunTransitionResult,
)
from stagewise._decisions import StartedAttempt
from stagewise._errors import (
    DuplicateRecordError,
    IdempotencyInProgressError,
    IdempotencyKeyReusedError,
    InvalidConfigError,
    InvalidInputError,
    InvalidRunInputError,
    PayloadTooLargeError,
    RunNotFoundError,
)
from stagewise._h_jobs import hand_off
from stagewise._records import IdempotencyRecord, Json
from stagewise._run import Run
from stagewise._runtime import Runtime
from stagewise._states import RunStatus
from stagewise._text import UnstorableValue, encode_json
from stagewise._unit import UnitOfWork

IDEMPOTENCY_SCOPE = "run.create"


async def run_create(rt: Runtime, cmd: RunCreate) -> RunCreateResult:
    """Create a run; a key another transaction took at the same moment is replayed."""
    try:
        return await _create(rt, cmd)
    except DuplicateRecordError:
        if cmd.idempotency_key is None:
            raise
        # Another transaction took the key between our read and our write; it has
        # committed by now (our write waited for it). Replay theirs.
        return await _create(rt, cmd)


async def _create(rt: Runtime, cmd: RunCreate) -> RunCreateResult:
    workflow = rt.registry.get_workflow(cmd.workflow_id)
    # Everything that can be wrong with the request is found before the transaction, so
    # a refused request writes nothing.
    data = workflow.validate_input(cmd.input)
    config = workflow.resolve_config(cmd.config)
    size = _stored_size(data, lambda why: InvalidRunInputError(cmd.workflow_id, why, []))
    size += _stored_size(config, lambda why: InvalidConfigError(cmd.workflow_id, why))
    if size > rt.settings.max_payload_bytes:  # the config is stored with the run too
        raise PayloadTooLargeError("run input and config", size, rt.settings.max_payload_bytes)
    _stored_size(cmd.metadata, lambda why: InvalidInputError(f"run metadata is refused: {why}"))
    fingerprint = _fingerprint(cmd, data, config)

    async def create(
        unit: UnitOfWork, _: Run | None
    ) -> tuple[RunCreateResult, StartedAttempt | None]:
        key = cmd.idempotency_key
        if key is not None:
            replay = await _replay(unit, key, fingerprint)
            if replay is not None:
                return replay, None  # it started (or will start) elsewhere: nothing here
        run_id = unit.rules.new_id()
        if key is not None:
            unit.keys.append(_key_record(unit, key, fingerprint, run_id))
        run = unit.add(
            Run.create(
                run_id=run_id,
                workflow=workflow,
                input=data,
                config=config,
                priority=cmd.priority,
                idempotency_key=key,
                rules=unit.rules,
                metadata=cmd.metadata,
                deadline=cmd.deadline,
            ).outcome
        )
        handoff = None
        if cmd.worker_id is not None:
            # Start at creation: the claim and the first stage's start ride along, so an
            # in-process host runs it without a NOTIFY, a claim or a start transaction.
            started = run.start()
            if started.outcome:
                handoff = hand_off(unit, run, cmd.worker_id, started.changes.jobs)
        result = RunCreateResult(run_id=run_id, status=run.record.status, created=True)
        return result, handoff

    # Concurrent creations in this process share a transaction (a new run locks nothing).
    result, handoff = await rt.group.run(cmd.type, None, create)
    if handoff is None:
        return result
    # Only once committed (as in run.claimPending): a rolled-back creation starts nothing.
    return result.model_copy(update={"started_jobs": rt.hand_over([handoff])})


def _key_record(unit: UnitOfWork, key: str, fingerprint: str, run_id: str) -> IdempotencyRecord:
    now = unit.now
    return IdempotencyRecord(
        scope=IDEMPOTENCY_SCOPE,
        key=key,
        fingerprint=fingerprint,
        state="completed",
        created_at=now,
        expires_at=now + timedelta(seconds=unit.rules.settings.idempotency_ttl),
        result={"run_id": run_id},
    )


async def _replay(unit: UnitOfWork, key: str, fingerprint: str) -> RunCreateResult | None:
    existing = unit.pending_key(IDEMPOTENCY_SCOPE, key) or await unit.tx.idempotency.get(
        IDEMPOTENCY_SCOPE, key
    )
    if existing is None:
        return None
    if existing.fingerprint != fingerprint:
        raise IdempotencyKeyReusedError(key)
    if existing.state == "in_progress":
        wait = (existing.expires_at - unit.now).total_seconds()
        if wait > 0:
            raise IdempotencyInProgressError(key, retry_after=wait)
        return None  # a stale holder: take the key over
    run_id = str(existing.result["run_id"])
    held = unit.runs.get(run_id)
    run = held.record if held is not None else await unit.tx.runs.get(run_id)
    status = run.status if run is not None else RunStatus.PENDING
    return RunCreateResult(run_id=run_id, status=status, created=False)


def _stored_size(data: Json, refused: Callable[[str], InvalidInputError]) -> int:
    """The size `data` is stored at; refused alike on every backend when it cannot be."""
    try:
        return len(encode_json(data))
    except UnstorableValue as exc:
        raise refused(f"it {exc}") from None


def _fingerprint(cmd: RunCreate, data: Json, config: Json) -> str:
    # Metadata and a deadline only when there are: keys recorded before runs had them
    # still match.
    request: list[Json] = [cmd.workflow_id, data, config, cmd.priority]
    if cmd.metadata:
        request.append(dict(cmd.metadata))
    if cmd.deadline is not None:
        request.append(["deadline", cmd.deadline.isoformat()])
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


async def run_claim_pending(rt: Runtime, cmd: RunClaimPending) -> RunClaimPendingResult:
    started: list[StartedAttempt] = []
    run_ids: list[str] = []
    enqueued = 0
    async with rt.unit(cmd.type) as unit:
        # Only runs of workflow versions this process has: the others wait for a worker
        # that has theirs (never started, or failed, by the wrong plan).
        known = rt.registry.known()
        for record in await unit.tx.runs.claim_pending(cmd.limit, workflows=known):
            run = unit.adopt(record)
            if run.workflow is None:  # (the adapter did not filter): left PENDING for others
                continue
            decision = run.start()
            if not decision.outcome:
                continue
            run_ids.append(record.run_id)
            enqueued += len(decision.changes.jobs)
            if cmd.worker_id is not None and len(started) < cmd.take:
                handoff = hand_off(unit, run, cmd.worker_id, decision.changes.jobs)
                if handoff is not None:
                    started.append(handoff)
                    enqueued -= 1
    # Only once committed (as in job.execute): a rolled-back claim starts nothing.
    return RunClaimPendingResult(
        run_ids=run_ids, jobs_enqueued=enqueued, started_jobs=rt.hand_over(started)
    )


async def run_transition(rt: Runtime, cmd: RunTransition) -> RunTransitionResult:
    async with rt.unit(cmd.type) as unit:
        run = await _require(unit, cmd.run_id, rt)
        outputs = await load_blobs(rt.ports.blob_store, run.refs_to_finish())
        decision = run.advance(outputs).outcome
        status = run.record.status
    return RunTransitionResult(run_id=cmd.run_id, decision=decision, status=status)


async def run_cancel(rt: Runtime, cmd: RunCancel) -> RunCancelResult:
    async with rt.unit(cmd.type) as unit:
        run = await _require(unit, cmd.run_id)
        cancelled = run.cancel(cmd.reason).outcome
        status = run.record.status
    return RunCancelResult(run_id=cmd.run_id, cancelled=cancelled, status=status)


async def run_rerun_from(rt: Runtime, cmd: RunRerunFrom) -> RunRerunResult:
    async with rt.unit(cmd.type) as unit:
        run = await _require(unit, cmd.run_id, rt)
        reset = run.rerun_from(cmd.stage_id).outcome
    return RunRerunResult(run_id=cmd.run_id, status=RunStatus.RUNNING, reset_stages=reset)


async def _require(unit: UnitOfWork, run_id: str, rt: Runtime | None = None) -> Run:
    """The locked run; with `rt`, one whose workflow this process knows (a decision about
    its plan is refused otherwise, with the registry's error)."""
    run = await unit.run(run_id)
    if run is None:
        raise RunNotFoundError(run_id)
    if rt is not None and run.workflow is None:
        record = run.record  # raises WorkflowNotFoundError (or its version's)
        rt.registry.get_workflow(record.workflow_id, record.workflow_version)
    return run
