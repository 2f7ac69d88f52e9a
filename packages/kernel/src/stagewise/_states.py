"""Run and stage states, and every legal transition between them.

Theory of operation
-------------------
A run or stage changes state only through `next_run_status` / `next_stage_status`, which look
the change up in the tables below. Each table maps (current state, trigger) to the next
state; a trigger names *why* the state changes (a worker started the attempt, the lease
expired, the run was cancelled...). Anything not in a table is illegal and raises a single
`InvalidTransitionError` naming the entity, its state and the command that asked.

Keeping the whole lifecycle in two dicts is what lets us reason about races: a late worker,
a duplicate delivery or a concurrent cancel all end up asking for a transition from a state
that no longer allows it, and the lookup refuses it before anything is written. Handlers
therefore never compare states ad hoc to decide *whether* a change is legal; they ask the
table, and compare states only to decide *which* change to ask for.

Terminal states have no outgoing transitions except `rerun` (a run) and `reset` (a stage,
when a run is rerun from it), which are explicit user commands.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from stagewise._errors import InvalidTransitionError


class RunStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_RUN


class StageStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUSPENDED = "SUSPENDED"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"  # reserved for branching

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_STAGE


_TERMINAL_RUN = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
_TERMINAL_STAGE = frozenset(
    {StageStatus.COMPLETED, StageStatus.FAILED, StageStatus.CANCELLED, StageStatus.SKIPPED}
)

RunTrigger = Literal["claim", "complete", "fail", "cancel", "rerun"]
StageTrigger = Literal[
    "start",
    "complete",
    "suspend",
    "retry",
    "fail",
    "cancel",
    "resume",
    "reset",
    "expire",
    "release",
]

R, S = RunStatus, StageStatus

RUN_TRANSITIONS: dict[tuple[RunStatus, RunTrigger], RunStatus] = {
    (R.PENDING, "claim"): R.RUNNING,
    (R.PENDING, "cancel"): R.CANCELLED,
    (R.PENDING, "fail"): R.FAILED,  # past its deadline before it started
    (R.RUNNING, "complete"): R.COMPLETED,
    (R.RUNNING, "fail"): R.FAILED,
    (R.RUNNING, "cancel"): R.CANCELLED,
    # A finished run can be rerun from one of its stages (run.rerunFrom).
    (R.COMPLETED, "rerun"): R.RUNNING,
    (R.FAILED, "rerun"): R.RUNNING,
    (R.CANCELLED, "rerun"): R.RUNNING,
}

STAGE_TRANSITIONS: dict[tuple[StageStatus, StageTrigger], StageStatus] = {
    # A delivery starts the attempt; only a stage waiting for one can start.
    (S.PENDING, "start"): S.RUNNING,
    (S.RETRYING, "start"): S.RUNNING,
    # The attempt's outcome, recorded by the worker that holds the lease.
    (S.RUNNING, "complete"): S.COMPLETED,
    (S.RUNNING, "suspend"): S.SUSPENDED,
    (S.RUNNING, "retry"): S.RETRYING,
    (S.RUNNING, "fail"): S.FAILED,
    # The lease expired without a heartbeat: the attempt counts, and is retried or failed.
    (S.RUNNING, "expire"): S.RETRYING,
    # The worker gave the attempt back unfinished (graceful shutdown): it does not count,
    # and the same attempt waits for another worker.
    (S.RUNNING, "release"): S.PENDING,
    # check_completion said Ready, raised, or max_wait passed.
    (S.SUSPENDED, "resume"): S.COMPLETED,
    (S.SUSPENDED, "fail"): S.FAILED,
    # The run was cancelled or failed elsewhere: every unfinished stage stops.
    (S.PENDING, "cancel"): S.CANCELLED,
    (S.RUNNING, "cancel"): S.CANCELLED,
    (S.SUSPENDED, "cancel"): S.CANCELLED,
    (S.RETRYING, "cancel"): S.CANCELLED,
    # A retry whose attempts are spent before it could start (reaped while waiting).
    (S.RETRYING, "fail"): S.FAILED,
    # run.rerunFrom: a finished stage is made to run again.
    (S.COMPLETED, "reset"): S.PENDING,
    (S.FAILED, "reset"): S.PENDING,
    (S.CANCELLED, "reset"): S.PENDING,
}

del R, S


def next_run_status(
    current: RunStatus, trigger: RunTrigger, *, run_id: str, command: str
) -> RunStatus:
    """The state a run moves to on `trigger`, or `InvalidTransitionError`."""
    try:
        return RUN_TRANSITIONS[(current, trigger)]
    except KeyError:
        raise InvalidTransitionError("run", run_id, current.value, command) from None


def next_stage_status(
    current: StageStatus, trigger: StageTrigger, *, stage_key: str, command: str
) -> StageStatus:
    """The state a stage moves to on `trigger`, or `InvalidTransitionError`."""
    try:
        return STAGE_TRANSITIONS[(current, trigger)]
    except KeyError:
        raise InvalidTransitionError("stage", stage_key, current.value, command) from None
