"""One error root, a few meaningful branches.

Every error the kernel or an adapter raises is a `StagewiseError`. The branches say what the
caller can do about it: fix the input (`InvalidInputError`), look for something else
(`NotFoundError`), back off because someone else holds the thing (`ConflictError`), or retry
later (`TransientError`). Fields are attributes, so callers never parse messages.
"""

from __future__ import annotations

from typing import Any


class StagewiseError(Exception):
    """The root of every error stagewise raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- not found -----------------------------------------------------------------------------


class NotFoundError(StagewiseError):
    """Something the caller named does not exist."""


class WorkflowNotFoundError(NotFoundError):
    def __init__(self, workflow_id: str, known: list[str] | None = None) -> None:
        hint = f"; registered workflows: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"workflow {workflow_id!r} is not registered{hint}")
        self.workflow_id = workflow_id


class WorkflowVersionNotFoundError(WorkflowNotFoundError):
    """The workflow is registered here, but not at the version asked for (a run created by
    other code): this process must not drive it with another plan."""

    def __init__(self, workflow_id: str, version: str, known: list[str]) -> None:
        NotFoundError.__init__(
            self,
            f"workflow {workflow_id!r} has no version {version!r} here; registered versions: "
            f"{', '.join(known) or 'none'}",
        )
        self.workflow_id = workflow_id
        self.version = version


class RunNotFoundError(NotFoundError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} does not exist")
        self.run_id = run_id


class StageNotFoundError(NotFoundError):
    def __init__(self, workflow_id: str, stage_id: str) -> None:
        super().__init__(f"workflow {workflow_id!r} has no stage {stage_id!r}")
        self.workflow_id = workflow_id
        self.stage_id = stage_id


class BlobNotFoundError(NotFoundError):
    def __init__(self, key: str) -> None:
        super().__init__(f"blob {key!r} does not exist")
        self.key = key


# --- invalid input -------------------------------------------------------------------------


class InvalidInputError(StagewiseError):
    """The caller's input is wrong; retrying the same call cannot succeed.

    `errors` holds the structured validation errors (pydantic's shape) when there are any.
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class InvalidCommandError(InvalidInputError):
    """A command (object or dict) that does not validate."""


class InvalidRunInputError(InvalidInputError):
    def __init__(self, workflow_id: str, detail: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"input for workflow {workflow_id!r} is invalid: {detail}", errors)
        self.workflow_id = workflow_id


class InvalidConfigError(InvalidInputError):
    def __init__(
        self, workflow_id: str, detail: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"config for workflow {workflow_id!r} is invalid: {detail}", errors)
        self.workflow_id = workflow_id


class PayloadTooLargeError(InvalidInputError):
    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.what = what
        self.size = size
        self.limit = limit


class InvalidCursorError(InvalidInputError, ValueError):
    """A page cursor (`Kernel.list_runs`) that this version did not make: cut, edited, or
    from another listing. A `ValueError` too, as a malformed argument is."""

    def __init__(self, cursor: str) -> None:
        shown = cursor if len(cursor) <= 80 else cursor[:77] + "..."
        super().__init__(f"not a run cursor: {shown!r} (pass the next_cursor a page gave)")
        self.cursor = cursor


class WorkflowDefinitionError(InvalidInputError):
    """A workflow or stage definition is wrong (raised at build time, not run time)."""


class StageOutputError(InvalidInputError):
    """A stage returned something that does not match its declared output."""


# --- conflicts -----------------------------------------------------------------------------


class ConflictError(StagewiseError):
    """The thing exists but is in a state (or held by someone) that refuses the request."""


class InvalidTransitionError(ConflictError):
    """A state change the transition table does not allow."""

    def __init__(self, entity: str, entity_id: str, state: str, command: str) -> None:
        super().__init__(
            f"{entity} {entity_id!r} is {state}; {command!r} is not allowed from there"
        )
        self.entity = entity
        self.entity_id = entity_id
        self.state = state
        self.command = command


class RunCancelledError(ConflictError):
    """The run was cancelled: raised by `ctx.cancelled.raise_if_cancelled()` in its
    stages, and by `Kernel.run_output` for its output."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} was cancelled")
        self.run_id = run_id


class DuplicateRecordError(ConflictError):
    """An insert hit an existing key (a run, stage, event or job that already exists)."""


class ConcurrentUpdateError(ConflictError):
    """A run was written by someone else since it was read, so a write made on top of what
    was read was refused and nothing of its transaction committed. The kernel locks the
    runs it changes, so this means an adapter did not hold a lock it promised.

    `run_ids` names the runs of the refused write: the stale ones where the adapter can
    tell (in memory), every run the write updated where it cannot (SQL).
    """

    def __init__(self, run_ids: list[str]) -> None:
        super().__init__(
            f"run {', '.join(map(repr, run_ids))} changed since it was read; nothing was written"
        )
        self.run_ids = run_ids


class LeaseLost(ConflictError):
    """This attempt no longer holds its lease: another delivery owns the stage, or it ended.

    Nothing the attempt tried to record was written.
    """

    def __init__(self, run_id: str, stage_id: str, attempt: int, reason: str) -> None:
        super().__init__(
            f"attempt {attempt} of stage {stage_id!r} in run {run_id!r} lost its lease: {reason}"
        )
        self.run_id = run_id
        self.stage_id = stage_id
        self.attempt = attempt
        self.reason = reason


class IdempotencyInProgressError(ConflictError):
    """Another caller holds this idempotency key and has not finished yet; retry later."""

    def __init__(self, key: str, retry_after: float) -> None:
        super().__init__(f"idempotency key {key!r} is held by a request still in progress")
        self.key = key
        self.retry_after = retry_after


class IdempotencyKeyReusedError(ConflictError):
    """The idempotency key was used before for a different request."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for a request with different content"
        )
        self.key = key


# --- transient -----------------------------------------------------------------------------


class TransientError(StagewiseError):
    """A failure that may go away by itself (lost connection, serialization failure)."""


class TransactionConflictError(TransientError):
    """The database aborted a transaction to resolve a conflict with another one (a
    deadlock, a serialization failure). Nothing of it committed, and the kernel tries the
    whole unit again; callers see it only when that kept failing."""


class LeaseExpiredError(TransientError):
    """The worker running an attempt stopped heartbeating (it crashed or hung)."""


class PersistenceError(StagewiseError):
    """The storage backend failed in a way that is not transient (schema, permissions...)."""


class SchemaVersionError(PersistenceError):
    """The database schema is not the version this code expects."""


class DeadlineExceededError(StagewiseError):
    """A run was still unfinished at its deadline (`RunCreate.deadline`, the workflow's
    `timeout`): it ended FAILED with this error type, its open stages cancelled."""


class SignalTimeoutError(StagewiseError):
    """A signal stage (`on_timeout="fail"`) received no signal on its topic in time."""

    def __init__(self, stage_id: str, topic: str, timeout: float) -> None:
        super().__init__(
            f"stage {stage_id!r} received no signal on topic {topic!r} within {timeout:g}s"
        )
        self.stage_id = stage_id
        self.topic = topic
        self.timeout = timeout


class RunNotActiveError(ConflictError):
    """The run has ended (COMPLETED, FAILED or CANCELLED): it takes no more signals."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"run {run_id!r} is {status}: it takes no signals")
        self.run_id = run_id
        self.status = status


class StreamClosedError(ConflictError):
    """The run's stream was closed (`ctx.close_stream`): it takes no more items."""

    def __init__(self, run_id: str, key: str) -> None:
        super().__init__(f"stream {key!r} of run {run_id!r} is closed")
        self.run_id = run_id
        self.key = key


class StageTimeoutError(StagewiseError):
    """A stage attempt ran longer than its `timeout`."""

    def __init__(self, stage_id: str, timeout: float) -> None:
        super().__init__(f"stage {stage_id!r} did not finish within its timeout of {timeout}s")
        self.stage_id = stage_id
        self.timeout = timeout


class SuspendTimeoutError(StagewiseError):
    """A suspended stage did not become ready within its `max_wait`."""

    def __init__(self, stage_id: str, max_wait: float) -> None:
        super().__init__(f"stage {stage_id!r} was not ready within max_wait of {max_wait}s")
        self.stage_id = stage_id
        self.max_wait = max_wait


class RunFailedError(StagewiseError):
    """The run whose output was asked for (`Kernel.run_output`) ended FAILED: its error's
    type and message are attributes, its whole record is `Kernel.get_run`'s."""

    def __init__(self, run_id: str, error_type: str, error_message: str) -> None:
        super().__init__(f"run {run_id!r} failed: {error_type}: {error_message}")
        self.run_id = run_id
        self.error_type = error_type
        self.error_message = error_message


class PluginDeliveryError(StagewiseError):
    """A plugin or event sink failed to take an event."""
