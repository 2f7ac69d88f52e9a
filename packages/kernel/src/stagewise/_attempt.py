"""One attempt's surroundings, outside any transaction: the context its code sees, and the
large outputs and artifacts it writes to the blob store before its outcome is recorded."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from stagewise._context import (
    AttemptBuffer,
    CancellationToken,
    RunStorage,
    StageContext,
    StreamWriter,
)
from stagewise._decisions import Output, StartedAttempt
from stagewise._errors import InvalidInputError, StageOutputError
from stagewise._execution import ensure_json
from stagewise._ports import BlobStore
from stagewise._records import JobMessage, Json, RunRecord, StageRecord
from stagewise._settings import KernelSettings
from stagewise._stages import Stage
from stagewise._states import StageStatus
from stagewise._workflow import Workflow, _summary


async def build_context(
    blobs: BlobStore,
    now: Callable[[], datetime],
    workflow: Workflow,
    stage_def: Stage,
    started: StartedAttempt,
    *,
    token: CancellationToken,
    buffer: AttemptBuffer,
    resume_state: Json = None,
    streams: StreamWriter | None = None,
) -> StageContext:
    """The stage's context: its input (the previous group's output), config, earlier outputs.

    Raises:
        InvalidInputError: the input or config does not validate against the stage's models.
    """
    run, stages = started.run, started.stages
    stage = stages[stage_def.id]
    index = stage.group_index
    outputs = await load_outputs(blobs, [s for s in stages.values() if s.group_index < index])
    raw_input = run.input if index == 0 else workflow.group_output(index - 1, outputs)
    return StageContext(
        run_id=run.run_id,
        workflow_id=run.workflow_id,
        stage_id=stage_def.id,
        attempt=stage.attempt,
        input=_validate(stage_def, stage_def.input, raw_input, "input"),
        run_input=run.input,
        run_input_model=workflow.input,
        config=_validate(stage_def, stage_def.config, run.config.get(stage_def.id), "config"),
        resume_state=resume_state,
        outputs=outputs,
        output_models={s.id: s.output for s in workflow.stages},
        storage=RunStorage(blobs, run.run_id),
        cancelled=token,
        buffer=buffer,
        now=now,
        streams=streams,
    )


async def load_outputs(blobs: BlobStore, stages: list[StageRecord]) -> dict[str, Json]:
    """Completed stages' outputs by stage id, fetching offloaded ones from the blob store."""
    outputs: dict[str, Json] = {}
    for stage in stages:
        if stage.status is not StageStatus.COMPLETED:
            continue
        if stage.output_ref is not None:
            outputs[stage.stage_id] = json.loads(await blobs.get(stage.output_ref))
        else:
            outputs[stage.stage_id] = stage.output
    return outputs


async def stored_output(blobs: BlobStore, run: RunRecord) -> Json:
    """The run's output: on its row, or in the blob store when it was too large for it."""
    if run.output_ref is not None:
        return json.loads(await blobs.get(run.output_ref))
    return run.output


async def load_blobs(blobs: BlobStore, keys: list[str]) -> dict[str, Json]:
    """The JSON blobs under `keys` (what `Run.refs_to_finish` asks for), by key."""
    return {key: json.loads(await blobs.get(key)) for key in keys}


def _validate(stage: Stage, model: type[BaseModel] | None, value: Any, what: str) -> Any:
    if model is None:
        return value
    try:
        return model.model_validate(value if value is not None else {})
    except ValidationError as exc:
        raise InvalidInputError(
            f"stage {stage.id!r} got {what} that does not match {model.__name__}: {_summary(exc)}"
        ) from None


async def store_blobs(
    blobs: BlobStore, settings: KernelSettings, job: JobMessage, outcome: Output
) -> Output | StageOutputError:
    """Put large outputs and artifacts in the blob store before the finish transaction.

    An output that cannot be stored (`_text`) or is over `max_output_bytes` is the stage's
    failure, said now: the finish transaction would otherwise fail late, or store it.
    Keys carry the job id, so a refused (fenced-out) attempt never overwrites the blobs of the
    attempt that won; its own blobs are orphans under keys nothing refers to.
    """
    what = f"stage {job.stage_id!r} output"
    try:
        encoded = ensure_json(outcome.value, what)
    except StageOutputError as exc:
        return exc
    if len(encoded) > settings.max_output_bytes:
        return StageOutputError(
            f"{what} is {len(encoded):,} bytes of JSON, over the "
            f"{settings.max_output_bytes:,} bytes KernelSettings.max_output_bytes allows "
            "(put large results in ctx.storage or an artifact, and return a reference)"
        )
    prefix = f"runs/{job.run_id}/stages/{job.stage_id}/{job.job_id.replace(':', '-')}"
    refs = {}
    for name, data in outcome.artifacts.items():
        refs[name] = f"{prefix}/artifacts/{name}"
        await blobs.put(refs[name], data)
    ref = None
    if len(encoded) > settings.inline_output_bytes:
        ref = f"{prefix}/output.json"
        await blobs.put(ref, encoded)
    return replace(outcome, ref=ref, artifact_refs=refs)
