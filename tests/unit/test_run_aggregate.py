"""The run aggregate on its own: every decision from every state, as pure functions.

No event loop, no ports: a `Run` is built from rows, a decision is made, and what it
returns (its outcome and its changes) is checked against a table of what each decision
must do from each state. Every pair also keeps the aggregate's bookkeeping rules: a
refused decision changes no row; a change to a stage comes with the run's row at the next
version; events continue the run's numbering.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from stagewise import (
    ConflictError,
    InvalidTransitionError,
    KernelSettings,
    RetryPolicy,
    RunStatus,
    StageNotFoundError,
    StageStatus,
    Workflow,
    WorkflowBuilder,
    define_async_batch_stage,
    define_stage,
)
from stagewise._decisions import NO_REPORTS, Decision, Output, Reports, Rules, Suspension
from stagewise._records import ErrorInfo, JobMessage, LogRecord, RunRecord, StageRecord
from stagewise._run import Run
from stagewise._run_maintenance import Reclaim
from stagewise.testing import SequentialIds
from stagewise.testing._clock import DEFAULT_START as T0

S, R = StageStatus, RunStatus
LEASE = 30.0


def workflow() -> Workflow:
    """`a`, then `b` and `c` side by side (`c` an async-batch stage, 2 attempts each)."""
    retry = RetryPolicy(max_attempts=2, jitter=0)
    noop = define_stage(id="a", execute=lambda ctx: None, retry=retry)
    return (
        WorkflowBuilder("wf")
        .pipe(noop)
        .parallel(
            [
                define_stage(id="b", execute=lambda ctx: None, retry=retry),
                define_async_batch_stage(
                    id="c", execute=lambda ctx: None, check_completion=lambda s, c: None
                ),
            ]
        )
        .build()
    )


def rules(now: datetime = T0, ids: SequentialIds | None = None) -> Rules:
    return Rules(now, (ids or SequentialIds("x")).new_id, KernelSettings(LEASE), "test")


def run_row(status: RunStatus = R.RUNNING, **fields: Any) -> RunRecord:
    return RunRecord(
        run_id="r1",
        workflow_id="wf",
        status=status,
        input={"n": 1},
        config={},
        created_at=T0,
        updated_at=T0,
        current_group=fields.pop("current_group", 0),
        event_seq=fields.pop("event_seq", 4),
        version=fields.pop("version", 7),
        **fields,
    )


def stage_row(stage_id: str, status: StageStatus, **fields: Any) -> StageRecord:
    held = status is S.RUNNING or (status is S.SUSPENDED and fields.pop("polled", False))
    return StageRecord(
        run_id="r1",
        stage_id=stage_id,
        group_index=fields.pop("group_index", 0 if stage_id == "a" else 1),
        status=status,
        created_at=T0,
        updated_at=T0,
        attempt=fields.pop("attempt", 1),
        job_id="j1" if held else None,
        worker_id="w1" if held else None,
        lease_expires_at=T0 + timedelta(seconds=LEASE) if held else None,
        due_at=fields.pop("due_at", T0 if status in (S.PENDING, S.RETRYING, S.SUSPENDED) else None),
        enqueued_at=T0 if status in (S.PENDING, S.RETRYING) else None,
        suspend_deadline=T0 + timedelta(days=1) if status is S.SUSPENDED else None,
        output={"done": stage_id} if status is S.COMPLETED else None,
        **fields,
    )


def job(stage_id: str = "a", job_id: str = "j1", attempt: int = 1) -> JobMessage:
    return JobMessage(job_id, "r1", "wf", stage_id, attempt, available_at=T0)


def aggregate(
    status: StageStatus | None = S.RUNNING,
    *,
    run_status: RunStatus = R.RUNNING,
    now: datetime = T0,
    others: tuple[StageRecord, ...] = (),
) -> Run:
    stages = (() if status is None else (stage_row("a", status),)) + others
    return Run(run_row(run_status), stages, workflow=workflow(), rules=rules(now))


def check_bookkeeping(run: Run, decision: Decision[Any], loaded: RunRecord) -> None:
    """The rules every decision keeps, whatever it decided."""
    changes = decision.changes
    if changes.stages or changes.deleted or changes.events:
        assert changes.run is not None, "a change to a stage comes with the run's row"
    if changes.run is not None:
        assert changes.run.version == loaded.version + 1
        assert changes.run.updated_at == run.now
    seqs = [e.seq for e in changes.events]
    assert seqs == list(range(loaded.event_seq + 1, loaded.event_seq + 1 + len(seqs)))
    if changes.run is not None:
        assert changes.run.event_seq == loaded.event_seq + len(seqs)
    for stage in changes.stages:
        if stage.status is S.RUNNING:  # held: by a job, until a lease
            assert stage.job_id is not None and stage.lease_expires_at is not None
        elif stage.status is not S.SUSPENDED:  # (a poll holds a suspended one)
            assert stage.lease_expires_at is None


def decide(run: Run, name: str) -> Decision[Any]:
    """One decision about stage `a` (held by job j1 at attempt 1 where it is held)."""
    a = job()
    if name == "begin":
        return run.begin_attempt(a, "w2")
    if name == "complete":
        return run.record_attempt(a, Output({"ok": True}), NO_REPORTS, {})
    if name == "suspend":
        return run.record_attempt(a, Suspension({"id": 1}, 60, 600), NO_REPORTS, {})
    if name == "fail":
        return run.record_attempt(a, ErrorInfo("Boom", "boom"), NO_REPORTS, {})
    if name == "heartbeat":
        return run.heartbeat(a, NO_REPORTS)
    if name == "release":
        return run.release(a, NO_REPORTS)
    if name == "expire":
        return run.expire_lease("a", "j1")
    if name == "requeue":
        return run.requeue("a", T0 + timedelta(seconds=1))
    if name == "claim_poll":
        return run.claim_poll(job(job_id="poll-1"))
    if name == "record_poll":
        return run.record_poll(job(job_id="j1"), Output("ready"), NO_REPORTS, {})
    raise AssertionError(name)


# What each decision about stage `a` does from each of its states (the run RUNNING): the
# outcome, and the stage's status after ("=" where it must not change).
LATER = T0 + timedelta(seconds=LEASE + 1)  # every lease and due time has passed
TABLE: dict[str, dict[StageStatus, tuple[Any, str]]] = {
    "begin": {
        S.PENDING: ("started", "RUNNING"),
        S.RETRYING: ("started", "RUNNING"),
        S.RUNNING: ("lost", "="),
        S.SUSPENDED: ("lost", "="),
        S.COMPLETED: ("completed", "="),
        S.FAILED: ("lost", "="),
        S.CANCELLED: ("cancelled", "="),
    },
    "complete": {
        S.RUNNING: ("completed", "COMPLETED"),
        S.CANCELLED: ("cancelled", "="),
        **{s: ("lost", "=") for s in (S.PENDING, S.RETRYING, S.SUSPENDED, S.COMPLETED, S.FAILED)},
    },
    "suspend": {
        S.RUNNING: ("suspended", "SUSPENDED"),
        S.CANCELLED: ("cancelled", "="),
        **{s: ("lost", "=") for s in (S.PENDING, S.RETRYING, S.SUSPENDED, S.COMPLETED, S.FAILED)},
    },
    "fail": {
        S.RUNNING: ("retry", "RETRYING"),
        S.CANCELLED: ("cancelled", "="),
        **{s: ("lost", "=") for s in (S.PENDING, S.RETRYING, S.SUSPENDED, S.COMPLETED, S.FAILED)},
    },
    "heartbeat": {
        S.RUNNING: ("extended", "RUNNING"),
        S.PENDING: ("early", "="),
        S.RETRYING: ("early", "="),  # waits for this attempt: not started yet
        S.CANCELLED: ("cancelled", "="),
        **{s: ("lost", "=") for s in (S.SUSPENDED, S.COMPLETED, S.FAILED)},
    },
    "release": {
        S.RUNNING: (True, "PENDING"),
        **{s: (False, "=") for s in S if s is not S.RUNNING},
    },
    "expire": {
        S.RUNNING: ("retry", "RETRYING"),
        **{s: ("skipped", "=") for s in S if s is not S.RUNNING},
    },
    "requeue": {
        S.PENDING: (True, "PENDING"),
        S.RETRYING: (True, "RETRYING"),
        **{s: (False, "=") for s in S if s not in (S.PENDING, S.RETRYING)},
    },
    "claim_poll": {
        S.SUSPENDED: ("claimed", "SUSPENDED"),
        **{s: (None, "=") for s in S if s is not S.SUSPENDED},
    },
    "record_poll": {
        **{s: ("rescheduled", "=") for s in S},  # held only by its poll's token, below
    },
}


def outcome_of(name: str, decision: Decision[Any]) -> Any:
    out = decision.outcome
    if name == "begin":
        return "started" if out.started is not None else out.refused
    if name in ("complete", "suspend", "fail"):
        return out.outcome
    if name == "heartbeat":
        if out.lost is not None:
            return "lost"
        return "cancelled" if out.cancelled else ("extended" if out.started else "early")
    if name == "claim_poll":
        return None if out is None else "claimed"
    return out


@pytest.mark.parametrize("status", list(S)[:-1])  # SKIPPED is reserved for branching
@pytest.mark.parametrize("name", list(TABLE))
def test_every_decision_from_every_stage_state(name: str, status: StageStatus) -> None:
    now = LATER if name == "expire" else T0
    run_status = R.CANCELLED if status is S.CANCELLED else R.RUNNING
    run = aggregate(status, run_status=run_status, now=now)
    loaded = run.record

    decision = decide(run, name)

    expected, after = TABLE[name][status]
    assert outcome_of(name, decision) == expected
    stage = run.stages["a"]
    assert stage.status is (status if after == "=" else S(after))
    if after == "=" and name not in ("requeue",):
        assert not decision.changes.stages and decision.changes.run is None
    check_bookkeeping(run, decision, loaded)


def test_a_poll_records_only_while_its_token_holds_the_stage() -> None:
    held = stage_row("c", S.SUSPENDED, polled=True)
    rows = (stage_row("a", S.COMPLETED), stage_row("b", S.COMPLETED), held)
    run = Run(run_row(R.RUNNING, current_group=1), rows, workflow=workflow(), rules=rules())

    assert run.record_poll(job("c", "other"), Output(1), NO_REPORTS, {}).outcome == "rescheduled"
    assert run.stages["c"].status is S.SUSPENDED
    decision = run.record_poll(job("c", "j1"), Output(1), NO_REPORTS, {})

    assert decision.outcome == "resumed"
    assert run.stages["c"].status is S.COMPLETED
    assert run.record.status is R.COMPLETED  # the last of its group, the last group
    assert [e.type for e in decision.changes.events] == ["stage.completed", "run.completed"]


# --- run-level decisions --------------------------------------------------------------------


@pytest.mark.parametrize("status", list(R))
def test_start_claims_only_a_pending_run(status: RunStatus) -> None:
    run = Run(run_row(status, current_group=-1), (), workflow=workflow(), rules=rules())

    decision = run.start()

    assert decision.outcome is (status is R.PENDING)
    if status is R.PENDING:
        assert run.record.status is R.RUNNING
        assert [s.stage_id for s in decision.changes.stages] == ["a"]
        assert [(j.stage_id, j.attempt) for j in decision.changes.jobs] == [("a", 1)]
        assert [e.type for e in decision.changes.events] == ["run.started"]
    else:
        assert decision.changes.run is None


@pytest.mark.parametrize("status", list(R))
def test_cancel_closes_an_unfinished_run_and_nothing_else(status: RunStatus) -> None:
    run = Run(run_row(status), (stage_row("a", S.RUNNING),), workflow=workflow(), rules=rules())

    decision = run.cancel("enough")

    assert decision.outcome is (not status.is_terminal)
    if status.is_terminal:
        assert decision.changes.run is None and not decision.changes.stop_attempts
    else:
        assert run.record.status is R.CANCELLED
        assert run.stages["a"].status is S.CANCELLED
        assert decision.changes.discard_jobs and decision.changes.stop_attempts
        # The running attempt ends with the run: its history has an end.
        assert [e.type for e in decision.changes.events] == ["stage.cancelled", "run.cancelled"]


@pytest.mark.parametrize("status", list(R))
def test_rerun_is_allowed_only_from_a_finished_run(status: RunStatus) -> None:
    rows = (stage_row("a", S.COMPLETED), stage_row("b", S.FAILED), stage_row("c", S.COMPLETED))
    run = Run(run_row(status, current_group=1), rows, workflow=workflow(), rules=rules())

    if not status.is_terminal:
        with pytest.raises(InvalidTransitionError):
            run.rerun_from("b")
        assert run.take_changes().changes.run is None  # nothing changed before it refused
        return
    decision = run.rerun_from("b")
    assert decision.outcome == ["b"]  # c completed: it keeps its output
    assert run.record.status is R.RUNNING
    b = run.stages["b"]
    assert (b.status, b.attempt, b.uncounted) == (S.PENDING, 2, 1)  # numbers go on, uncounted
    assert run.stages["c"].status is S.COMPLETED


def test_rerun_refuses_an_unknown_stage_or_an_earlier_stage_that_never_ran() -> None:
    done = Run(run_row(R.CANCELLED, current_group=0), (), workflow=workflow(), rules=rules())

    with pytest.raises(StageNotFoundError):
        done.rerun_from("nope")
    with pytest.raises(ConflictError, match="never started"):
        done.rerun_from("b")


@pytest.mark.parametrize(
    ("b", "c", "decided"),
    [
        (S.COMPLETED, S.COMPLETED, "completed"),
        (S.COMPLETED, S.RUNNING, "noop"),
        (S.FAILED, S.RUNNING, "failed"),
        (S.COMPLETED, S.SUSPENDED, "noop"),
    ],
)
def test_advance_decides_from_the_rows_alone(b: StageStatus, c: StageStatus, decided: str) -> None:
    rows = (stage_row("a", S.COMPLETED), stage_row("b", b), stage_row("c", c))
    run = Run(run_row(R.RUNNING, current_group=1), rows, workflow=workflow(), rules=rules())

    decision = run.advance({})
    again = run.advance({})

    assert decision.outcome == decided
    assert again.outcome == "noop"  # safe to call twice: the first one moved the run on
    if decided == "completed":
        assert run.record.output == {"b": {"done": "b"}, "c": {"done": "c"}}
    if decided == "failed":
        assert run.stages["c"].status is S.CANCELLED and decision.changes.discard_jobs


# --- the rules across decisions ----------------------------------------------------------


def test_one_transaction_writes_the_run_once_at_the_next_version() -> None:
    run = aggregate(S.PENDING)
    run.begin_attempt(job(), "w1")
    run.heartbeat(job(), Reports(progress=(50.0, "half")))
    run.record_attempt(job(), Output(1), NO_REPORTS, {})

    taken = run.take_changes()

    assert taken.expected_version == 7
    assert taken.changes.run is not None and taken.changes.run.version == 8
    assert [s.stage_id for s in taken.changes.stages] == ["a", "b", "c"]  # each written once
    assert [e.seq for e in taken.changes.events] == list(range(5, 5 + len(taken.changes.events)))
    assert run.take_changes().changes.run is None  # taken: nothing left to write


def test_a_finished_attempts_last_failure_fails_the_run_and_closes_its_stages() -> None:
    run = aggregate(S.RUNNING)
    run.stages["a"] = replace(run.stages["a"], attempt=2)  # the last attempt of two

    decision = run.record_attempt(job(attempt=2), ErrorInfo("Boom", "no"), NO_REPORTS, {})

    assert decision.outcome.outcome == "failed"
    assert run.record.status is R.FAILED
    assert [e.type for e in decision.changes.events] == ["stage.failed", "run.failed"]
    assert decision.changes.discard_jobs


def test_a_reaped_attempt_moves_on_so_the_old_job_can_never_pass_the_fence() -> None:
    run = aggregate(S.RUNNING, now=LATER)

    assert run.expire_lease("a", "j1").outcome == "retry"
    late = run.record_attempt(job(), Output(1), NO_REPORTS, {})

    assert late.outcome.outcome == "lost"
    assert (run.stages["a"].status, run.stages["a"].attempt) == (S.RETRYING, 2)


def test_an_attempts_reports_are_written_only_while_it_holds_the_stage() -> None:
    line = LogRecord("r1", "a", 1, "info", "hi", {}, T0)
    held = aggregate(S.RUNNING)
    reaped = aggregate(S.RETRYING)

    kept = held.heartbeat(job(), Reports((line,), (10.0, None)))
    dropped = reaped.heartbeat(job(), Reports((line,), (10.0, None)))

    assert kept.changes.logs == (line,) and held.stages["a"].progress == 10.0
    assert dropped.changes.logs == () and reaped.stages["a"].progress is None


def test_a_large_run_output_becomes_a_blob_written_with_the_decision() -> None:
    rows = (stage_row("a", S.COMPLETED), stage_row("b", S.COMPLETED), stage_row("c", S.RUNNING))
    big = Rules(T0, SequentialIds().new_id, KernelSettings(LEASE, inline_output_bytes=10), "t")
    run = Run(run_row(R.RUNNING, current_group=1), rows, workflow=workflow(), rules=big)

    decision = run.record_attempt(job("c"), Output("x" * 50), NO_REPORTS, {})

    assert run.record.status is R.COMPLETED
    assert run.record.output is None and run.record.output_ref == "runs/r1/output.json"
    assert [w.key for w in decision.changes.blob_writes] == ["runs/r1/output.json"]


@pytest.mark.parametrize(
    ("why", "says"),
    [
        ("lease", "worker 'w1' stopped heartbeating attempt 1 of stage 'a': its lease expired"),
        ("gone", "worker 'w1' stopped heartbeating attempt 1 of stage 'a': the worker is gone"),
        ("restarted", "worker 'w1' restarted while it ran attempt 1 of stage 'a'"),
        ("stopped", "worker 'w1' stopped while it still ran attempt 1 of stage 'a'"),
    ],
)
def test_a_reclaimed_attempt_records_the_true_reason(why: Reclaim, says: str) -> None:
    # A dead or departed worker's attempt is reclaimed before its lease ends and retried at
    # once (the stage did not fail); a lease that merely ran out keeps the policy's backoff.
    now = LATER if why == "lease" else T0 + timedelta(seconds=1)
    run = aggregate(S.RUNNING, now=now)

    assert run.expire_lease("a", "j1", why=why).outcome == "retry"

    a = run.stages["a"]
    assert a.error is not None and a.error.message.startswith(says)
    assert a.error.type == "LeaseExpiredError"
    assert (a.due_at == now) is (why != "lease")


def test_an_expired_lease_is_the_only_reason_that_waits_for_the_lease() -> None:
    run = aggregate(S.RUNNING, now=T0 + timedelta(seconds=1))

    assert run.expire_lease("a", "j1", why="lease").outcome == "skipped"
    assert run.expire_lease("a", "j-other", why="gone").outcome == "skipped"  # moved on
    assert run.stages["a"].status is S.RUNNING


@pytest.mark.parametrize(
    ("outcome", "recorded"),
    [
        (Output({"ok": True}), "completed"),
        (Suspension({"id": 1}, 60, 600), "suspended"),
        (ErrorInfo("Boom", "boom"), "retry"),
        (ErrorInfo("Boom", "boom", retryable=False), "failed"),
    ],
)
def test_a_finish_tried_again_after_its_commit_gets_the_same_answer_and_changes_nothing(
    outcome: Output | Suspension | ErrorInfo, recorded: str
) -> None:
    first = aggregate(S.RUNNING)
    assert first.record_attempt(job(), outcome, NO_REPORTS, {}).outcome.outcome == recorded
    committed = first.take_changes().changes
    assert committed.run is not None
    again = Run(committed.run, list(committed.stages), workflow=workflow(), rules=rules())

    decision = again.record_attempt(job(), outcome, NO_REPORTS, {})

    assert (decision.outcome.outcome, decision.outcome.replayed) == (recorded, True)
    assert decision.changes.run is None and not decision.changes.events
    assert not decision.changes.jobs


def test_a_finish_after_the_reaper_took_the_attempt_is_lost_not_a_replay() -> None:
    run = aggregate(S.RUNNING, now=LATER)
    assert run.expire_lease("a", "j1").outcome == "retry"

    late = run.record_attempt(job(), ErrorInfo("Boom", "boom"), NO_REPORTS, {})

    assert (late.outcome.outcome, late.outcome.replayed) == ("lost", False)


@pytest.mark.parametrize(
    ("status", "deadline", "expired"),
    [
        (R.RUNNING, T0, True),  # due this very moment
        (R.PENDING, T0 - timedelta(seconds=1), True),
        (R.RUNNING, T0 + timedelta(seconds=1), False),  # not yet (a rerun moved it, say)
        (R.RUNNING, None, False),
        (R.COMPLETED, T0 - timedelta(hours=1), False),  # it ended in time
    ],
)
def test_a_run_past_its_deadline_fails_and_closes_every_open_stage(
    status: RunStatus, deadline: datetime | None, expired: bool
) -> None:
    loaded = run_row(status, deadline=deadline)
    stages = () if status is R.PENDING else (stage_row("a", S.RUNNING),)
    run = Run(loaded, stages, workflow=workflow(), rules=rules())
    decision = run.expire_deadline()
    check_bookkeeping(run, decision, loaded)
    assert decision.outcome is expired
    if not expired:
        assert decision.changes.run is None and not decision.changes.events
        return
    assert run.record.status is R.FAILED
    assert run.record.error is not None and run.record.error.type == "DeadlineExceededError"
    assert not run.record.error.retryable
    assert all(s.status is S.CANCELLED for s in run.stages.values())
    assert decision.changes.stop_attempts and decision.changes.discard_jobs
    assert [e.type for e in decision.changes.events][-1] == "run.failed"


def test_a_retry_scheduled_before_the_run_ends_in_one_transaction_is_not_enqueued() -> None:
    # The reaper retries stage a (a job enqueued), then the run's deadline fails it, in one
    # transaction: the transaction discards the run's jobs before it enqueues, so the retry
    # must not be among the jobs it enqueues, or it would outlive the run.
    loaded = run_row(R.RUNNING, deadline=T0)
    late = T0 + timedelta(seconds=LEASE + 1)
    run = Run(loaded, (stage_row("a", S.RUNNING),), workflow=workflow(), rules=rules(late))
    assert run.expire_lease("a", "j1").outcome == "retry"
    assert run.expire_deadline().outcome is True
    written = run.take_changes().changes
    assert written.discard_jobs and written.jobs == ()
