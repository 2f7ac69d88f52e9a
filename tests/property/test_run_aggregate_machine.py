"""The run aggregate alone, driven through random decisions, keeps its invariants.

Hypothesis plays every party around one run at once: the transport (jobs enqueued, acked,
dropped, delivered any number of times and in any order), workers (that start deliveries,
finish them with an output, a failure or a suspension, heartbeat, give attempts back, or
vanish), the reaper, the poller, the clock, and a user who cancels, advances and reruns.
Each decision is made as a transaction would make it: a `Run` built from the stored rows,
one or more decisions, its changes written where the stored version is the one read.

After every step:

* the run's version went up by exactly one for every transaction that changed it;
* its events are numbered 1..n with no gap;
* a RUNNING stage is held by exactly one job, with a lease; no other delivery passes its
  fence;
* every COMPLETED stage has exactly one `stage.completed` since it last started over;
* a finished run has no open stage and no job left in the queue.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stagewise import KernelSettings, RunStatus, StageStatus
from stagewise._decisions import NO_REPORTS, Output, Rules, Suspension
from stagewise._records import ErrorInfo, JobMessage, RunRecord, StageRecord
from stagewise._run import Run
from stagewise._run_maintenance import Reclaim
from stagewise.testing import SequentialIds
from stagewise.testing._clock import DEFAULT_START as T0
from tests.unit.test_run_aggregate import LEASE, workflow

S, R = StageStatus, RunStatus
OPEN = {S.PENDING, S.RUNNING, S.SUSPENDED, S.RETRYING}


ENDS = frozenset(
    {"stage.completed", "stage.failed", "stage.retrying", "stage.released", "stage.cancelled"}
)
"""The events that end an attempt (a suspension does not: the attempt goes on)."""


class RunAggregateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.ids = SequentialIds("m")
        self.wf = workflow()
        self.record: RunRecord | None = None
        self.stages: dict[str, StageRecord] = {}
        self.queue: dict[str, JobMessage] = {}
        self.ever: dict[str, JobMessage] = {}  # every job ever enqueued: any may come again
        self.held: dict[str, JobMessage] = {}  # deliveries a worker started and still runs
        self.polls: list[JobMessage] = []  # poll claims waiting for their answer
        self.finished: dict[str, tuple[JobMessage, Any, str]] = {}  # job, outcome, answer
        self.seqs: list[int] = []
        self.completions: Counter[str] = Counter()
        self.commits = 0
        self.started: dict[str, list[int]] = {}  # attempt numbers started, by stage
        self.ended: set[tuple[str, int]] = set()  # (stage, attempt) with an ending event

    # --- a transaction -------------------------------------------------------------------

    def load(self) -> Run:
        assert self.record is not None
        rules = Rules(self.now, self.ids.new_id, KernelSettings(LEASE), "machine")
        return Run(self.record, self.stages.values(), workflow=self.wf, rules=rules)

    def commit(self, run: Run) -> None:
        taken = run.take_changes()
        changes = taken.changes
        if changes.run is not None:
            stored = None if self.record is None else self.record.version
            assert taken.expected_version == stored, "a write on a version it did not read"
            assert changes.run.version == (stored or 0) + 1
            self.record = changes.run
            self.commits += 1
        for stage_id in changes.deleted:
            self.stages.pop(stage_id)
        for stage in changes.stages:
            if stage.status is S.PENDING and stage.started_at is None:
                self.completions[stage.stage_id] = 0  # (re)created: starts over
            self.stages[stage.stage_id] = stage
        for event in changes.events:
            self.seqs.append(event.seq)
            if event.type == "stage.completed":
                self.completions[event.payload["stage_id"]] += 1
            if event.type == "stage.started":
                numbers = self.started.setdefault(event.payload["stage_id"], [])
                assert not numbers or event.payload["attempt"] > numbers[-1], "a number reused"
                numbers.append(event.payload["attempt"])
            if event.type in ENDS:
                self.ended.add((event.payload["stage_id"], event.payload["attempt"]))
        for job_id in changes.acks:
            self.queue.pop(job_id, None)
        if changes.discard_jobs:
            self.queue.clear()
        self.queue.update((j.job_id, j) for j in changes.jobs)
        self.ever.update((j.job_id, j) for j in changes.jobs)

    # --- rules ---------------------------------------------------------------------------

    @precondition(lambda self: self.record is None)
    @rule()
    def create(self) -> None:
        rules = Rules(self.now, self.ids.new_id, KernelSettings(LEASE), "machine")
        run = Run.create(
            run_id="r1", workflow=self.wf, input={"n": 1}, config={}, priority=0,
            idempotency_key=None, rules=rules, deadline=self.now + timedelta(hours=2),
        ).outcome  # fmt: skip
        self.commit(run)

    @precondition(lambda self: self.record is not None and self.record.status is R.PENDING)
    @rule()
    def claim(self) -> None:
        run = self.load()
        run.start()
        self.commit(run)

    @precondition(lambda self: bool(self.ever))
    @rule(data=st.data(), worker=st.sampled_from(["w1", "w2"]), again=st.booleans())
    def deliver(self, data: st.DataObject, worker: str, again: bool) -> None:
        """A queued job, or (`again`) any job ever enqueued: a late duplicate delivery."""
        jobs = self.ever if again or not self.queue else self.queue
        job = data.draw(st.sampled_from(sorted(jobs.values(), key=lambda j: j.job_id)))
        run = self.load()
        start = run.begin_attempt(job, worker).outcome
        self.commit(run)
        if start.started is not None:
            self.held[job.job_id] = job

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), how=st.sampled_from(["output", "failure", "suspend"]))
    def finish(self, data: st.DataObject, how: str) -> None:
        job = self.held.pop(data.draw(st.sampled_from(sorted(self.held))))
        outcome: Any = {
            "output": Output({"from": job.stage_id}),
            "failure": ErrorInfo("Boom", "boom", retryable=data.draw(st.booleans())),
            "suspend": Suspension({"x": 1}, 30, 120),
        }[how if how != "suspend" or job.stage_id == "c" else "output"]
        run = self.load()
        answer = run.record_attempt(job, outcome, NO_REPORTS, {}).outcome.outcome
        self.queue.pop(job.job_id, None)  # the layer acks the delivery it finished
        self.commit(run)
        self.finished[job.job_id] = (job, outcome, answer)

    @precondition(lambda self: bool(self.finished))
    @rule(data=st.data())
    def finish_again(self, data: st.DataObject) -> None:
        """A finish tried again (its commit went unheard): the first answer, changing
        nothing, or refused if the stage has moved on since."""
        job, outcome, answer = self.finished[data.draw(st.sampled_from(sorted(self.finished)))]
        run = self.load()
        again = run.record_attempt(job, outcome, NO_REPORTS, {}).outcome
        if again.replayed:
            assert again.outcome == answer
            assert run.take_changes().changes.run is None
        else:
            assert again.outcome in ("lost", "cancelled")
            self.commit(run)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), action=st.sampled_from(["heartbeat", "release", "vanish"]))
    def worker_acts(self, data: st.DataObject, action: str) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.held)))
        if action == "vanish":  # the worker died: its lease will expire
            del self.held[job_id]
            return
        run = self.load()
        if action == "heartbeat":
            beat = run.heartbeat(self.held[job_id], NO_REPORTS).outcome
            if beat.lost is not None or beat.cancelled:
                del self.held[job_id]
        elif run.release(self.held.pop(job_id), NO_REPORTS).outcome is False:
            pass
        self.commit(run)

    @rule(seconds=st.sampled_from([1, LEASE / 2, LEASE + 1, 120, 3600]))
    def time_passes(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    @precondition(lambda self: self.record is not None)
    @rule(why=st.sampled_from(["lease", "restarted", "stopped", "gone"]))
    def reap(self, why: Reclaim) -> None:
        # The reasons other than an expired lease reclaim what one worker ("w1") holds.
        run = self.load()
        for stage in list(run.stages.values()):
            if stage.status is S.RUNNING:
                reason: Reclaim = why if stage.worker_id == "w1" else "lease"
                run.expire_lease(stage.stage_id, stage.job_id, why=reason)
        self.commit(run)

    @precondition(lambda self: self.record is not None)
    @rule()
    def deadline_checked(self) -> None:
        run = self.load()
        expired = run.expire_deadline().outcome
        deadline = self.record.deadline if self.record is not None else None
        self.commit(run)
        if expired:
            assert deadline is not None and deadline <= self.now
            assert self.record is not None and self.record.status is R.FAILED
            assert not any(s.status in OPEN for s in self.stages.values())
            assert not self.queue

    @precondition(lambda self: self.record is not None)
    @rule()
    def poll_claim(self) -> None:
        run = self.load()
        for stage in list(run.stages.values()):
            if stage.status is S.SUSPENDED:
                poll = JobMessage(self.ids.new_id(), "r1", "wf", stage.stage_id, stage.attempt,
                                  available_at=self.now)  # fmt: skip
                if run.claim_poll(poll).outcome is not None:
                    self.polls.append(poll)
        self.commit(run)

    @precondition(lambda self: bool(self.polls))
    @rule(data=st.data(), said=st.sampled_from(["ready", "later", "failed"]))
    def poll_answer(self, data: st.DataObject, said: str) -> None:
        poll = self.polls.pop(data.draw(st.integers(0, len(self.polls) - 1)))
        outcome: Any = {"ready": Output(7), "later": 30.0, "failed": ErrorInfo("X", "x")}[said]
        run = self.load()
        run.record_poll(poll, outcome, NO_REPORTS, {})
        self.commit(run)

    @precondition(lambda self: self.record is not None)
    @rule(action=st.sampled_from(["cancel", "advance"]))
    def user_acts(self, action: str) -> None:
        run = self.load()
        if action == "cancel":
            run.cancel("enough")
        else:
            run.advance({})
        self.commit(run)

    @precondition(lambda self: self.record is not None and self.record.status.is_terminal)
    @rule(stage_id=st.sampled_from(["a", "b", "c"]))
    def rerun(self, stage_id: str) -> None:
        run = self.load()
        try:
            run.rerun_from(stage_id)
        except Exception:  # refused (an earlier stage did not complete): nothing written
            assert run.take_changes().changes.run is None
            return
        self.commit(run)

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def versions_count_the_transactions(self) -> None:
        if self.record is not None:
            assert self.record.version == self.commits

    @invariant()
    def events_are_numbered_without_gaps(self) -> None:
        assert self.seqs == list(range(1, len(self.seqs) + 1))
        if self.record is not None:
            assert self.record.event_seq == len(self.seqs)

    @invariant()
    def a_running_stage_is_held_by_one_job(self) -> None:
        for stage in self.stages.values():
            if stage.status is S.RUNNING:
                assert stage.job_id is not None and stage.lease_expires_at is not None
                holder = self.ever[stage.job_id]
                assert (holder.stage_id, holder.attempt) == (stage.stage_id, stage.attempt)
            holders = [
                j
                for j in self.held.values()
                if j.stage_id == stage.stage_id
                and stage.status is S.RUNNING
                and stage.job_id == j.job_id
                and stage.attempt == j.attempt
            ]
            assert len(holders) <= 1

    @invariant()
    def a_completed_stage_completed_once(self) -> None:
        for stage in self.stages.values():
            if stage.status is S.COMPLETED:
                assert self.completions[stage.stage_id] == 1, stage.stage_id

    @invariant()
    def attempts_not_counted_are_fewer_than_the_attempts(self) -> None:
        for stage in self.stages.values():
            assert 0 <= stage.uncounted < stage.attempt

    @invariant()
    def every_attempt_of_a_finished_run_has_an_end(self) -> None:
        if self.record is not None and self.record.status.is_terminal:
            started = {(sid, n) for sid, numbers in self.started.items() for n in numbers}
            assert started <= self.ended, started - self.ended

    @invariant()
    def a_finished_run_leaves_nothing_open(self) -> None:
        if self.record is not None and self.record.status.is_terminal:
            assert not [s for s in self.stages.values() if s.status in OPEN]
            assert not self.queue


RunAggregateMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_run_aggregate_machine = RunAggregateMachine.TestCase
