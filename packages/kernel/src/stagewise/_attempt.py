"""One attempt's surroundings: the context its code sees, and what it writes besides its
outcome (large outputs and artifacts to the blob store, buffered logs and progress)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ValidationError

from stagewise._context import RunStorage, StageContext
from stagewise._core import Core, Inflight, Unit
from stagewise._errors import InvalidInputError, StageOutputError
from stagewise._events import StageProgress
from stagewise._execution import Output, has_nul
from stagewise._flow import group_output, load_outputs
from stagewise._records import JobMessage, Json, LogRecord, RunRecord, StageRecord
from stagewise._scope import RunScope
from stagewise._stages import Stage
from stagewise._workflow import Workflow, _summary


async def build_context(
    core: Core,
    workflow: Workflow,
    stage_def: Stage,
    run: RunRecord,
    stages: dict[str, StageRecord],
    attempt: Inflight,
    resume_state: Json = None,
) -> StageContext:
    """The stage's context: its input (the previous group's output), config, earlier outputs.

    Raises:
        InvalidInputError: the input or config does not validate against the stage's models.
    """
    stage = stages[stage_def.id]
    earlier = {k: s for k, s in stages.items() if s.group_index < stage.group_index}
    outputs = await load_outputs(core, earlier)
    index = stage.group_index
    raw_input = run.input if index == 0 else group_output(workflow, outputs, index - 1)
    return StageContext(
        run_id=run.run_id,
        workflow_id=run.workflow_id,
        stage_id=stage_def.id,
        attempt=stage.attempt,
        input=_validate(stage_def, stage_def.input, raw_input, "input"),
        config=_validate(stage_def, stage_def.config, run.config.get(stage_def.id), "config"),
        resume_state=resume_state,
        outputs=outputs,
        output_models={s.id: s.output for s in workflow.stages},
        storage=RunStorage(core.blob_store, run.run_id),
        cancelled=attempt.token,
        buffer=attempt.buffer,
        now=core.clock.now,
    )


def _validate(stage: Stage, model: type[BaseModel] | None, value: Any, what: str) -> Any:
    if model is None:
        return value
    try:
        return model.model_validate(value if value is not None else {})
    except ValidationError as exc:
        raise InvalidInputError(
            f"stage {stage.id!r} got {what} that does not match {model.__name__}: {_summary(exc)}"
        ) from None


async def store_blobs(core: Core, job: JobMessage, outcome: Output) -> Output | StageOutputError:
    """Put large outputs and artifacts in the blob store before the finish transaction.

    Keys carry the job id, so a refused (fenced-out) attempt never overwrites the blobs of the
    attempt that won; its own blobs are orphans under keys nothing refers to.
    """
    encoded = json.dumps(outcome.value, separators=(",", ":")).encode()
    if has_nul(encoded):  # PostgreSQL would refuse the finish transaction: fail it clearly
        return StageOutputError(
            f"stage {job.stage_id!r} returned output containing a NUL character (\\u0000), "
            "which cannot be stored"
        )
    prefix = f"runs/{job.run_id}/stages/{job.stage_id}/{job.job_id}"
    refs = {}
    for name, data in outcome.artifacts.items():
        refs[name] = f"{prefix}/artifacts/{name}"
        await core.blob_store.put(refs[name], data)
    ref = None
    data = encoded
    if len(data) > core.settings.inline_output_bytes:
        ref = f"{prefix}/output.json"
        await core.blob_store.put(ref, data)
    return replace(outcome, ref=ref, artifact_refs=refs)


Reports = tuple[list[LogRecord], tuple[float, str | None] | None]
"""What `AttemptBuffer.drain()` hands over: logs, and the latest progress if any."""


async def flush_buffer(unit: Unit, scope: RunScope, job: JobMessage, reports: Reports) -> None:
    """Write the logs and latest progress an attempt reported (drained from its buffer
    before the transaction, so that a step tried twice writes them once)."""
    logs, progress = reports
    if logs:
        await unit.tx.logs.append(logs)
    if progress is not None:
        percent, message = progress
        scope.update_stage(job.stage_id, progress=percent, progress_message=message)
        scope.emit(
            StageProgress,
            stage_id=job.stage_id,
            attempt=job.attempt,
            percent=percent,
            message=message,
        )
