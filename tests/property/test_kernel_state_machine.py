"""Random interleavings of commands, crashes and duplicate deliveries keep the kernel's
invariants.

Hypothesis drives a kernel on the in-memory adapters through any order of: creating runs,
claiming, dequeuing, executing (a durable sleep among the stages), crashing a worker
mid-stage (its task is abandoned), delivering a job again, moving the clock past leases and
backoffs, reaping, polling, flushing, cancelling and transitioning. After every step:

* every run's events are numbered 1..n with no gap;
* no stage completes twice, and a COMPLETED stage has exactly one stage.completed event;
* a finished run has no unfinished stage and no job left in the queue;

and at the end, after a driver plays a healthy worker until idle, every run is finished and
every completed run has the right output.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from stagewise import (
    IdempotencyKeyReusedError,
    JobExecute,
    JobHeartbeat,
    JobMessage,
    KernelSettings,
    LeaseLost,
    LeaseReapStale,
    NotReady,
    OutboxFlush,
    Ready,
    RetryPolicy,
    RunCancel,
    RunClaimPending,
    RunCreate,
    RunNotActiveError,
    RunSignal,
    RunStatus,
    RunTransition,
    StageContext,
    StagePollSuspended,
    StageStatus,
    Suspend,
    WorkflowBuilder,
    define_async_batch_stage,
    define_signal_stage,
    define_sleep_stage,
    define_stage,
)
from stagewise.testing import TestEnvironment


async def _settle(tasks: list[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)


async def _yield(times: int = 3) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


# Gates that hold a "slow worker" inside user code until the machine releases it.
GATES: dict[tuple[str, str, int], asyncio.Event] = {}


async def _maybe_wait(ctx: StageContext) -> None:
    gate = GATES.get((ctx.run_id, ctx.stage_id, ctx.attempt))
    if gate is not None:
        await gate.wait()


async def step(ctx: StageContext) -> int:
    await _yield()
    await ctx.write_stream("trace", f"{ctx.stage_id}#{ctx.attempt} began")
    await _maybe_wait(ctx)
    await ctx.write_stream("trace", f"{ctx.stage_id}#{ctx.attempt} ended")  # fenced
    if ctx.require("start")["flaky"] and ctx.stage_id == "s2" and ctx.attempt == 1:
        raise ConnectionError("flaky once")
    return {"s1": 1, "s2": 10, "s3": 100}[ctx.stage_id]


async def passthrough(ctx: StageContext) -> dict[str, Any]:
    await _yield()
    await _maybe_wait(ctx)
    return dict(ctx.input)


async def submit(ctx: StageContext) -> Suspend:
    await _yield()
    return Suspend(state={"ready_after": 2}, poll_interval=30, max_wait=10_000)


def check(state: dict[str, int], ctx: StageContext) -> Ready | NotReady:
    ctx.log("info", "checked")
    return Ready(output=1000)


async def total(ctx: StageContext) -> int:
    await _yield()
    return sum(ctx.require(s) for s in ("s1", "s2", "s3"))


CHAIN = (
    WorkflowBuilder("chain")
    .pipe(define_stage(id="start", execute=passthrough))
    .pipe(define_stage(id="s1", execute=step))
    .pipe(define_stage(id="s2", execute=step, retry=RetryPolicy(max_attempts=5, jitter=0)))
    .pipe(define_stage(id="s3", execute=step))
    .pipe(define_stage(id="sum", execute=total, requires=["s1", "s2", "s3"]))
    .build()
)
FAN = (
    WorkflowBuilder("fan", timeout=900)  # a deadline the clock may pass
    .parallel(
        [
            define_stage(id="a", execute=passthrough),
            define_stage(id="b", execute=passthrough),
            define_async_batch_stage(id="batch", execute=submit, check_completion=check),
            define_sleep_stage(id="nap", duration=45),  # a durable wait: resumed by polls
            # a signal wait that races its timeout (signals come from the `signal` rule)
            define_signal_stage(id="gate", topic="go", timeout=90, on_timeout="continue"),
        ]
    )
    .pipe(define_stage(id="join", execute=lambda ctx: sorted(ctx.input)))
    .build()
)
EXPECTED = {"chain": 111, "fan": ["a", "b", "batch", "gate", "nap"]}
# Enough attempts that random crashes (each reaped crash counts as one) rarely exhaust them.
SETTINGS = KernelSettings(lease_seconds=30, outbox_max_attempts=3)


class KernelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.env = TestEnvironment([CHAIN, FAN], settings=SETTINGS)
        self.run_ids: list[str] = []
        self.cancelled: set[str] = set()
        self.crashed: list[asyncio.Task[Any]] = []
        self.slow_tasks: list[asyncio.Task[Any]] = []
        self.in_hand: list[JobMessage] = []
        self.delivered: list[JobMessage] = []
        self.slow: list[tuple[JobMessage, asyncio.Task[Any]]] = []
        GATES.clear()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def dispatch(self, command: Any) -> Any:
        try:
            return self.run(self.env.kernel.dispatch(command))
        except LeaseLost:
            return None

    @initialize(workflow=st.sampled_from(["chain", "fan"]))
    def first_run(self, workflow: str) -> None:
        self.create(workflow, True, None, False)
        self.claim(1)
        self.dequeue(3)

    @rule(
        workflow=st.sampled_from(["chain", "fan"]),
        flaky=st.booleans(),
        key=st.one_of(st.none(), st.sampled_from(["k1", "k2"])),
        start_here=st.booleans(),
    )
    def create(self, workflow: str, flaky: bool, key: str | None, start_here: bool) -> None:
        command = RunCreate(
            workflow_id=workflow,
            input={"flaky": flaky},
            idempotency_key=key,
            worker_id="m" if start_here else None,  # start at creation, for this worker
        )
        try:
            result = self.run(self.env.kernel.dispatch(command))
        except IdempotencyKeyReusedError:  # the same key with different input is refused
            assert key is not None
            return
        self.in_hand += result.started_jobs
        if result.run_id not in self.run_ids:
            self.run_ids.append(result.run_id)

    @rule(limit=st.integers(1, 5))
    def claim(self, limit: int) -> None:
        self.dispatch(RunClaimPending(limit=limit))

    @rule(limit=st.integers(1, 3))
    def dequeue(self, limit: int) -> None:
        self.in_hand += self.run(self.env.queue.dequeue(worker_id="m", limit=limit, lease_for=30))

    def _take(self, pool: list[Any], index: int) -> Any:
        return pool.pop(index % len(pool))

    @precondition(lambda self: bool(self.in_hand))
    @rule(index=st.integers(0, 9))
    def execute(self, index: int) -> None:
        job = self._take(self.in_hand, index)
        self.dispatch(JobExecute(job=job, worker_id="m"))
        self.delivered.append(job)

    @precondition(lambda self: bool(self.delivered))
    @rule(index=st.integers(0, 9))
    def deliver_again(self, index: int) -> None:
        job = self.delivered[index % len(self.delivered)]
        self.dispatch(JobExecute(job=job, worker_id="dup"))

    @precondition(lambda self: bool(self.in_hand))
    @rule(index=st.integers(0, 9), yields=st.integers(0, 12))
    def crash_mid_stage(self, index: int, yields: int) -> None:
        """Start the job and abandon it after a few scheduling points: a worker that died
        somewhere between its two transactions, or inside user code."""
        job = self._take(self.in_hand, index)
        task = self.loop.create_task(
            self.env.kernel.dispatch(JobExecute(job=job, worker_id="doomed"))
        )
        self.run(_yield(yields))
        task.cancel()
        self.crashed.append(task)
        self.run(_settle([task]))

    @precondition(lambda self: bool(self.in_hand))
    @rule(index=st.integers(0, 9))
    def start_slow(self, index: int) -> None:
        """A worker that starts the job and then stalls inside user code."""
        job = self._take(self.in_hand, index)
        # Copies of one job share one gate: replacing it would strand a copy already waiting.
        GATES.setdefault((job.run_id, job.stage_id, job.attempt), asyncio.Event())
        task = self.loop.create_task(
            self.env.kernel.dispatch(JobExecute(job=job, worker_id="slow"))
        )
        self.slow_tasks.append(task)
        self.run(_yield(12))
        self.slow.append((job, task))

    @precondition(lambda self: bool(self.slow))
    @rule(index=st.integers(0, 9))
    def finish_slow(self, index: int) -> None:
        """The stalled worker wakes up, maybe long after its lease expired."""
        job, task = self._take(self.slow, index)
        gate = GATES.pop((job.run_id, job.stage_id, job.attempt), None)
        if gate is not None:  # two copies of one job share a gate: the first opened it
            gate.set()
        self.run(_settle([task]))
        if task.cancelled():
            return
        if task.exception() is not None:
            assert isinstance(task.exception(), LeaseLost), task.exception()
            event("a late result was refused")
        else:
            event(f"a slow worker finished: {task.result().outcome}")

    @precondition(lambda self: bool(self.slow))
    @rule(index=st.integers(0, 9))
    def crash_slow(self, index: int) -> None:
        job, task = self._take(self.slow, index)
        task.cancel()
        gate = GATES.pop((job.run_id, job.stage_id, job.attempt), None)
        if gate is not None:  # another copy of the job may wait on it: let it go on
            gate.set()
        self.crashed.append(task)
        self.run(_settle([task]))

    @precondition(lambda self: bool(self.delivered))
    @rule(index=st.integers(0, 9))
    def heartbeat(self, index: int) -> None:
        job = self.delivered[index % len(self.delivered)]
        self.dispatch(JobHeartbeat(job=job, worker_id="m"))

    @rule(seconds=st.sampled_from([1, 5, 29, 31, 60, 300]))
    def advance_clock(self, seconds: int) -> None:
        self.env.clock.advance(seconds)

    @rule()
    def expire_leases(self) -> None:
        """Time passes beyond every lease and the reaper runs: stalled attempts are retried."""
        self.env.clock.advance(SETTINGS.lease_seconds + 1)
        self.dispatch(LeaseReapStale())

    @rule()
    def reap(self) -> None:
        self.dispatch(LeaseReapStale())

    @rule()
    def poll(self) -> None:
        self.dispatch(StagePollSuspended())

    @rule()
    def flush(self) -> None:
        self.dispatch(OutboxFlush(limit=7))

    @precondition(lambda self: bool(self.run_ids))
    @rule(index=st.integers(0, 50))
    def cancel(self, index: int) -> None:
        run_id = self.run_ids[index % len(self.run_ids)]
        if self.dispatch(RunCancel(run_id=run_id)).cancelled:
            self.cancelled.add(run_id)

    @precondition(lambda self: bool(self.run_ids))
    @rule(index=st.integers(0, 50), key=st.one_of(st.none(), st.sampled_from(["s1", "s2"])))
    def signal(self, index: int, key: str | None) -> None:
        run_id = self.run_ids[index % len(self.run_ids)]
        command = RunSignal(run_id=run_id, topic="go", payload=index, idempotency_key=key)
        with contextlib.suppress(RunNotActiveError):  # the run ended: refused, as it must be
            self.dispatch(command)

    @invariant()
    def a_signal_wait_takes_one_signal_or_times_out_never_both(self) -> None:
        signals = self.env.persistence.snapshot_signals()
        for run in self.env.persistence.snapshot_runs():
            mine = [s for s in signals if s.run_id == run.run_id]
            assert [s.seq for s in mine] == list(range(1, len(mine) + 1))
            taken = [s for s in mine if s.consumed_by is not None]
            assert len(taken) <= 1, taken  # one wait per run: one signal at most
            gate = {s.stage_id: s for s in self.env.persistence.snapshot_stages(run.run_id)}.get(
                "gate"
            )
            if gate is not None and gate.status is StageStatus.COMPLETED:
                expected = taken[0].payload if taken else None
                assert gate.output == expected, (gate, taken)
            keys = [s.idempotency_key for s in mine if s.idempotency_key]
            assert len(keys) == len(set(keys))

    @invariant()
    def streams_are_gap_free_and_fenced(self) -> None:
        """Each run's stream is numbered 0, 1, 2...; once an attempt of a stage has written,
        no earlier attempt of it writes again (it lost its stage when the later one began)."""
        by_stream: dict[tuple[str, str], list[Any]] = {}
        for item in self.env.persistence.snapshot_streams():
            by_stream.setdefault((item.run_id, item.key), []).append(item)
        for written in by_stream.values():
            assert [i.offset for i in written] == list(range(len(written)))
            latest: dict[str, int] = {}
            for i in written:
                assert i.attempt >= latest.get(i.stage_id, 0), written
                latest[i.stage_id] = i.attempt

    @precondition(lambda self: bool(self.run_ids))
    @rule(index=st.integers(0, 50))
    def transition(self, index: int) -> None:
        self.dispatch(RunTransition(run_id=self.run_ids[index % len(self.run_ids)]))

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def events_are_gap_free_and_stages_complete_once(self) -> None:
        events = self.env.persistence.snapshot_events()
        by_run: dict[str, list[int]] = {}
        completed: Counter[tuple[str, str]] = Counter()
        for record in events:
            by_run.setdefault(record.run_id, []).append(record.seq)
            if record.type == "stage.completed":
                completed[(record.run_id, record.payload["stage_id"])] += 1
        for run_id, seqs in by_run.items():
            assert seqs == list(range(1, len(seqs) + 1)), run_id
        assert all(n == 1 for n in completed.values()), completed
        for stage in self.env.persistence.snapshot_stages():
            if stage.status is StageStatus.COMPLETED:
                assert completed[(stage.run_id, stage.stage_id)] == 1

    @invariant()
    def finished_runs_leave_nothing_behind(self) -> None:
        queued = {job.run_id for job in self.env.queue.jobs()}
        for run in self.env.persistence.snapshot_runs():
            if not run.status.is_terminal:
                continue
            assert run.run_id not in queued, f"job left for {run.status} run {run.run_id}"
            stages = self.env.persistence.snapshot_stages(run.run_id)
            assert all(s.status.is_terminal for s in stages), stages
            if run.status is RunStatus.COMPLETED:
                assert all(s.status is StageStatus.COMPLETED for s in stages)

    def teardown(self) -> None:
        try:
            for task in self.slow_tasks:  # workers still stalled: they die now
                if not task.done():
                    task.cancel()
                    self.crashed.append(task)
            self.run(_settle(self.slow_tasks))
            GATES.clear()
            for task in self.crashed:
                assert task.done()
            report = self.run(self.env.run_until_idle(max_steps=20_000))
            assert report.settled
            self.events_are_gap_free_and_stages_complete_once()
            self.finished_runs_leave_nothing_behind()
            for run in self.env.persistence.snapshot_runs():
                assert run.status.is_terminal, run
                if run.run_id in self.cancelled:
                    assert run.status is RunStatus.CANCELLED
                elif run.status is RunStatus.COMPLETED:
                    assert run.output == EXPECTED[run.workflow_id]
                elif run.error is not None and run.error.type == "DeadlineExceededError":
                    # the clock went past the run's deadline before it finished
                    assert run.deadline is not None and run.finished_at is not None
                    assert run.finished_at >= run.deadline, run
                else:
                    # only crashes (each reaped one counts as an attempt) can exhaust attempts
                    assert run.status is RunStatus.FAILED, run
                    assert self.crashed, run
            assert len(self.env.queue) == 0
        finally:
            self.run(self.env.kernel.aclose())
            self.loop.close()


KernelMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestKernelStateMachine = KernelMachine.TestCase
