"""Handlers for run commands: create, claim, transition, cancel, rerun."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

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
from stagewise._core import Core, Handoff, Unit
from stagewise._errors import (
    ConflictError,
    IdempotencyInProgressError,
    IdempotencyKeyReusedError,
    InvalidConfigError,
    InvalidRunInputError,
    PayloadTooLargeError,
    RunNotFoundError,
    WorkflowNotFoundError,
)
from stagewise._events import RunCancelled, RunCreated, RunStarted
from stagewise._execution import has_nul
from stagewise._flow import advance, cancel_open_stages, fail_run, start_group
from stagewise._h_jobs import hand_off
from stagewise._ports import Transaction
from stagewise._records import (
    ErrorInfo,
    IdempotencyRecord,
    Json,
    RunRecord,
    StageRecord,
)
from stagewise._scope import RunScope
from stagewise._states import RunStatus, StageStatus

_IDEMPOTENCY_SCOPE = "run.create"


async def run_create(core: Core, cmd: RunCreate) -> RunCreateResult:
    workflow = core.registry.get_workflow(cmd.workflow_id)
    # Everything that can be wrong with the request is found before the transaction, so
    # a refused request writes nothing.
    data = workflow.validate_input(cmd.input)
    config = workflow.resolve_config(cmd.config)
    size = _json_size(data, cmd.workflow_id)
    if has_nul(json.dumps(config).encode()):
        raise InvalidConfigError(cmd.workflow_id, "it contains a NUL character (\\u0000)")
    if size > core.settings.max_payload_bytes:
        raise PayloadTooLargeError("run input", size, core.settings.max_payload_bytes)

    now = core.now
    fingerprint = _fingerprint(cmd.workflow_id, data, config, cmd.priority)

    async def create(unit: Unit, _: RunScope | None) -> tuple[RunCreateResult, Handoff | None]:
        key = cmd.idempotency_key
        if key is not None:
            existing = await unit.tx.idempotency.get(_IDEMPOTENCY_SCOPE, key)
            replay = await _replay(core, unit.tx, existing, key, fingerprint)
            if replay is not None:
                return replay, None  # it started (or will start) elsewhere: nothing here
        run_id = core.ids.new_id()
        run = RunRecord(
            run_id=run_id,
            workflow_id=workflow.id,
            status=RunStatus.PENDING,
            input=data,
            config=config,
            created_at=now,
            updated_at=now,
            priority=cmd.priority,
            idempotency_key=key,
        )
        await unit.tx.runs.insert(run)
        if key is not None:
            record = IdempotencyRecord(
                scope=_IDEMPOTENCY_SCOPE,
                key=key,
                fingerprint=fingerprint,
                state="completed",
                created_at=now,
                expires_at=now + timedelta(seconds=core.settings.idempotency_ttl),
                result={"run_id": run_id},
            )
            if not await unit.tx.idempotency.insert(record):
                # Another transaction took the key between our read and our insert; it has
                # committed by now (the insert waited for it). Roll back and replay theirs.
                raise _KeyTaken()
        scope = unit.adopt_pending(run)
        scope.emit(RunCreated, priority=cmd.priority)
        handoff = None
        if cmd.worker_id is None:
            unit.effects.hint("run.claimPending", now)
        elif claim_run(unit, run) is not None:
            # Start at creation: the claim and the first stage's start ride along, so an
            # in-process host runs it without a NOTIFY, a claim or a start transaction.
            handoff = hand_off(unit, scope, cmd.worker_id)
        result = RunCreateResult(run_id=run_id, status=scope.run.status, created=True)
        return result, handoff

    # Concurrent creations in this process share a transaction (a new run locks nothing).
    result, handoff = await core.group.run(cmd.type, None, create)
    if handoff is None:
        return result
    # Only once committed (as in run.claimPending): a rolled-back creation starts nothing.
    return result.model_copy(update={"started_jobs": core.hand_over([handoff])})


class _KeyTaken(Exception):
    pass


async def run_create_with_replay(core: Core, cmd: RunCreate) -> RunCreateResult:
    try:
        return await run_create(core, cmd)
    except _KeyTaken:
        return await run_create(core, cmd)


async def _replay(
    core: Core,
    tx: Transaction,
    existing: IdempotencyRecord | None,
    key: str,
    fingerprint: str,
) -> RunCreateResult | None:
    if existing is None:
        return None
    if existing.fingerprint != fingerprint:
        raise IdempotencyKeyReusedError(key)
    if existing.state == "in_progress":
        wait = (existing.expires_at - core.now).total_seconds()
        if wait > 0:
            raise IdempotencyInProgressError(key, retry_after=wait)
        return None  # a stale holder: take the key over
    run_id = str(existing.result["run_id"])
    run = await tx.runs.get(run_id)
    status = run.status if run is not None else RunStatus.PENDING
    return RunCreateResult(run_id=run_id, status=status, created=False)


def _json_size(data: Json, workflow_id: str) -> int:
    try:
        encoded = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidRunInputError(workflow_id, f"not JSON-compatible: {exc}", []) from None
    except RecursionError:
        raise InvalidRunInputError(workflow_id, "nested too deeply", []) from None
    if has_nul(encoded):  # PostgreSQL refuses it: refused here on every backend alike
        raise InvalidRunInputError(
            workflow_id, "it contains a NUL character (\\u0000), which cannot be stored", []
        )
    return len(encoded)


def _fingerprint(workflow_id: str, data: Json, config: Json, priority: int) -> str:
    blob = json.dumps([workflow_id, data, config, priority], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def claim_run(unit: Unit, run: RunRecord) -> RunScope | None:
    """Start a PENDING run this transaction holds (just claimed, or just created): RUNNING,
    `RunStarted`, its first group's stages created and their jobs enqueued. None when it
    did not start: it was no longer PENDING, or its workflow is unknown here (then it fails
    with the reason: nothing could ever run it from there)."""
    scope = unit.adopt_pending(run)
    if scope.run.status is not RunStatus.PENDING:
        return None
    scope.transition_run("claim", started_at=scope.now)
    scope.emit(RunStarted)
    try:
        workflow = unit.core.registry.get_workflow(run.workflow_id)
    except WorkflowNotFoundError as exc:
        fail_run(scope, ErrorInfo(type(exc).__name__, exc.message, False), None)
        return None
    start_group(scope, workflow, 0)
    return scope


async def run_claim_pending(core: Core, cmd: RunClaimPending) -> RunClaimPendingResult:
    started: list[Handoff] = []
    async with core.unit(cmd.type) as unit:
        claimed = await unit.tx.runs.claim_pending(cmd.limit)
        run_ids = []
        for run in claimed:
            scope = claim_run(unit, run)
            if scope is None:
                continue
            run_ids.append(run.run_id)
            if len(started) < cmd.take and cmd.worker_id is not None:
                handoff = hand_off(unit, scope, cmd.worker_id)
                if handoff is not None:
                    started.append(handoff)
        jobs = len(unit.effects.jobs)
    # Only once committed (as in job.execute): a rolled-back claim starts nothing.
    return RunClaimPendingResult(
        run_ids=run_ids, jobs_enqueued=jobs, started_jobs=core.hand_over(started)
    )


async def run_transition(core: Core, cmd: RunTransition) -> RunTransitionResult:
    async with core.unit(cmd.type) as unit:
        scope = await unit.require_run(cmd.run_id)
        workflow = core.registry.get_workflow(scope.run.workflow_id)
        decision = await advance(scope, workflow)
        status = scope.run.status
    return RunTransitionResult(run_id=cmd.run_id, decision=decision, status=status)


async def run_cancel(core: Core, cmd: RunCancel) -> RunCancelResult:
    async with core.unit(cmd.type) as unit:
        scope = await unit.require_run(cmd.run_id)
        if scope.run.status.is_terminal:
            return RunCancelResult(run_id=cmd.run_id, cancelled=False, status=scope.run.status)
        cancel_open_stages(scope)
        scope.transition_run("cancel", finished_at=core.now)
        scope.emit(RunCancelled, reason=cmd.reason)
        unit.effects.cancelled_runs.append(cmd.run_id)
    return RunCancelResult(run_id=cmd.run_id, cancelled=True, status=RunStatus.CANCELLED)


async def run_rerun_from(core: Core, cmd: RunRerunFrom) -> RunRerunResult:
    async with core.unit(cmd.type) as unit:
        scope = await unit.lock_run(cmd.run_id)
        if scope is None:
            raise RunNotFoundError(cmd.run_id)
        workflow = core.registry.get_workflow(scope.run.workflow_id)
        index = workflow.group_of(cmd.stage_id)
        scope.transition_run(
            "rerun",
            current_group=index,
            output=None,
            output_ref=None,
            error=None,
            finished_at=None,
        )
        for stage in scope.stages.values():
            if stage.group_index < index and stage.status is not StageStatus.COMPLETED:
                raise ConflictError(
                    f"cannot rerun run {cmd.run_id!r} from {cmd.stage_id!r}: earlier stage "
                    f"{stage.stage_id!r} is {stage.status.value}"
                )
        reset, deleted = _rerun_targets(scope.stages, workflow.plan[index], cmd.stage_id, index)
        for stage in [scope.stages[s] for s in reset + deleted if s in scope.stages]:
            unit.effects.blob_deletes.extend(_blob_keys(stage))
        scope.delete_stages(deleted)
        now = core.now
        for stage_id in reset:
            if stage_id in scope.stages:
                scope.transition_stage(stage_id, "reset")  # checks the table
                scope.delete_stages([stage_id])
            scope.add_stage(
                StageRecord(
                    run_id=cmd.run_id,
                    stage_id=stage_id,
                    group_index=index,
                    status=StageStatus.PENDING,
                    created_at=now,
                    updated_at=now,
                    due_at=now,
                    enqueued_at=now,
                )
            )
            scope.enqueue(stage_id, 1, now)
        scope.emit(RunStarted, rerun_from=cmd.stage_id)
    return RunRerunResult(run_id=cmd.run_id, status=RunStatus.RUNNING, reset_stages=reset)


def _rerun_targets(
    stages: dict[str, StageRecord], group: list[str], stage_id: str, index: int
) -> tuple[list[str], list[str]]:
    """Stages of the target's group to run again (the target and any sibling that did not
    complete), and the later stages to forget."""
    reset = sorted(
        sid
        for sid in group
        if sid == stage_id or sid not in stages or stages[sid].status is not StageStatus.COMPLETED
    )
    deleted = sorted(s.stage_id for s in stages.values() if s.group_index > index)
    return reset, deleted


def _blob_keys(stage: StageRecord) -> list[str]:
    keys = list(stage.artifacts.values())
    if stage.output_ref is not None:
        keys.append(stage.output_ref)
    return keys
