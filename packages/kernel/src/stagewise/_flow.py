"""Moving a run through its groups: start a group, decide what comes next.

Theory of operation
-------------------
`advance` is the whole of `run.transition`, and `job.execute` / `stage.pollSuspended` call it
inside the same transaction that records a stage's outcome, so a run moves on without a
maintenance pass. It is only ever called with the run row locked, which serializes the
stages of a parallel group finishing at the same moment: the last one to commit sees every
sibling COMPLETED and starts the next group; the others see the group unfinished and do
nothing. Calling it again (or concurrently, from `run.transition`) is a no-op once the run has
moved, because it derives everything from the rows it reads under the lock.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from stagewise._errors import StageOutputError
from stagewise._events import EventError, RunCompleted, RunFailed
from stagewise._records import ErrorInfo, Json, StageRecord
from stagewise._scope import RunScope
from stagewise._states import RunStatus, StageStatus
from stagewise._workflow import Workflow

if TYPE_CHECKING:
    from stagewise._core import Core


def start_group(scope: RunScope, workflow: Workflow, index: int) -> None:
    """Create the stages of group `index` (PENDING, attempt 1) and enqueue their jobs."""
    now = scope.now
    for stage in workflow.groups[index]:
        scope.add_stage(
            StageRecord(
                run_id=scope.run.run_id,
                stage_id=stage.id,
                group_index=index,
                status=StageStatus.PENDING,
                created_at=now,
                updated_at=now,
                attempt=1,
                due_at=now,
                enqueued_at=now,
            )
        )
        scope.enqueue(stage.id, 1, now)
    scope.update_run(current_group=index)


def group_output(workflow: Workflow, outputs: dict[str, Json], index: int) -> Any:
    """The output a group hands on: its stage's output, or a dict keyed by stage id."""
    group = workflow.groups[index]
    if len(group) == 1:
        return outputs[group[0].id]
    return {s.id: outputs[s.id] for s in group}


async def advance(scope: RunScope, workflow: Workflow) -> str:
    """Decide what comes next for a RUNNING run: "advanced", "completed", "failed", "noop"."""
    run = scope.run
    if run.status is not RunStatus.RUNNING or run.current_group < 0:
        return "noop"
    index = run.current_group
    expected = {s.id for s in workflow.groups[index]}
    group = [s for s in scope.group(index) if s.stage_id in expected]

    failed = next((s for s in group if s.status is StageStatus.FAILED), None)
    if failed is not None:
        fail_run(scope, failed.error or ErrorInfo("StageFailed", "stage failed"), failed.stage_id)
        return "failed"

    if len(group) < len(expected) or any(s.status is not StageStatus.COMPLETED for s in group):
        return "noop"

    if index + 1 < len(workflow.groups):
        start_group(scope, workflow, index + 1)
        return "advanced"

    outputs = await load_outputs(scope.core, {s.stage_id: s for s in group})
    try:
        output = workflow.validate_output(group_output(workflow, outputs, index))
    except StageOutputError as exc:
        fail_run(scope, ErrorInfo("StageOutputError", exc.message, retryable=False), None)
        return "failed"
    output, ref = await store_payload(scope, output, f"runs/{run.run_id}/output.json")
    scope.transition_run("complete", output=output, output_ref=ref, finished_at=scope.now)
    scope.emit(RunCompleted)
    return "completed"


def fail_run(scope: RunScope, error: ErrorInfo, stage_id: str | None) -> None:
    """Fail the run: every unfinished stage is cancelled and its queued jobs dropped."""
    cancel_open_stages(scope)
    scope.transition_run("fail", error=error, finished_at=scope.now)
    scope.emit(RunFailed, stage_id=stage_id, error=EventError.of(error))


def cancel_open_stages(scope: RunScope) -> None:
    for stage in list(scope.stages.values()):
        if not stage.status.is_terminal:
            scope.transition_stage(
                stage.stage_id,
                "cancel",
                job_id=None,
                worker_id=None,
                lease_expires_at=None,
                due_at=None,
                finished_at=scope.now,
            )
    scope.effects.discard_runs.append(scope.run.run_id)


async def store_payload(scope: RunScope, value: Json, key: str) -> tuple[Json, str | None]:
    """Keep `value` inline when small, else in the blob store under `key`."""
    data = json.dumps(value, separators=(",", ":")).encode()
    if len(data) <= scope.core.settings.inline_output_bytes:
        return value, None
    await scope.core.blob_store.put(key, data)
    return None, key


async def load_outputs(core: Core, stages: dict[str, StageRecord]) -> dict[str, Json]:
    """Completed stages' outputs by stage id, fetching offloaded ones from the blob store."""
    outputs: dict[str, Json] = {}
    for stage_id, stage in stages.items():
        if stage.status is not StageStatus.COMPLETED:
            continue
        if stage.output_ref is not None:
            outputs[stage_id] = json.loads(await core.blob_store.get(stage.output_ref))
        else:
            outputs[stage_id] = stage.output
    return outputs
