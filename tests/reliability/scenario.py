"""The representative workflow the fault sweeps run, and a world to run it in.

    fan-a | fan-b      a parallel group (fan-b is a blocking `def`, on the thread pool)
    batch              an async-batch stage: suspends, is polled until the outside work is ready
    flaky              fails its first attempt on purpose and is retried; output too large to
                       keep inline (it goes to the blob store)
    nap                a durable sleep of an hour: suspended, resumed by maintenance when due,
                       its input (flaky's large output) passed through
    approve            a signal wait: the client's signal, sent right after it created the
                       run (with an idempotency key), waits in the mailbox until then
    finish             reads earlier outputs and the blob, writes an artifact

and a plugin (`audit`) that receives every stage.completed and run.completed event.

`World` holds the stores (the "database", which outlives any process) and builds kernels on
them; `final_state` and `check_invariants` say what must be true after recovery.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Table, select

from stagewise import (
    Event,
    Kernel,
    KernelSettings,
    NotReady,
    Ready,
    RetryPolicy,
    RunCreate,
    RunSignal,
    StageContext,
    StageResult,
    Suspend,
    WorkflowBuilder,
    WorkflowRegistry,
    create_kernel,
    define_async_batch_stage,
    define_plugin,
    define_signal_stage,
    define_sleep_stage,
    define_stage,
)
from stagewise._ports import BlobStore, EventSink, JobTransport, Persistence
from stagewise._records import (
    Delivery,
    EventRecord,
    JobMessage,
    RunRecord,
    SignalRecord,
    StageRecord,
)
from stagewise.testing import (
    FakeClock,
    FaultInjector,
    InMemoryBlobStore,
    InMemoryJobQueue,
    InMemoryPersistence,
    RecordingScheduler,
    SequentialIds,
)
from stagewise_sql import SqlBackend, _rows, metadata

RETRY = RetryPolicy(max_attempts=4, initial_backoff=2.0, max_backoff=10.0)
"""Every stage may lose one attempt to a crash (reaping counts as an attempt) and still
reach the fault-free outcome; `flaky` spends one more on purpose."""

SETTINGS = KernelSettings(
    lease_seconds=10.0,
    inline_output_bytes=64,
    requeue_after=30.0,
    outbox_initial_backoff=1.0,
    outbox_max_backoff=4.0,
    outbox_max_attempts=50,
    sync_workers=2,
)


async def fan_a(ctx: StageContext) -> dict[str, Any]:
    return {"a": ctx.input["n"] * 2}


def fan_b(ctx: StageContext) -> dict[str, Any]:
    return {"b": ctx.input["n"] + 1}


OUTSIDE: Counter[str] = Counter()
"""The outside system the batch stage waits for: a ticket is ready at its second check."""


async def batch_execute(ctx: StageContext) -> Suspend:
    return Suspend(state={"ticket": ctx.run_id}, poll_interval=5, max_wait=600)


async def batch_check(state: Any, ctx: StageContext) -> Ready | NotReady:
    OUTSIDE[state["ticket"]] += 1
    if OUTSIDE[state["ticket"]] >= 2:
        return Ready({"sum": ctx.require("fan-a")["a"] + ctx.require("fan-b")["b"]})
    return NotReady(next_check_in=5)


class FlakyError(RuntimeError):
    pass


async def flaky(ctx: StageContext) -> dict[str, Any]:
    await ctx.write_stream("progress", f"try {ctx.attempt}")  # kept, whatever comes next
    if ctx.attempt == 1:
        raise FlakyError("the first attempt always fails")
    ctx.close_stream("progress")
    return {"rows": [ctx.input["sum"]] * 40}  # well over the inline limit: a blob


class Go(BaseModel):
    rows: int


async def finish(ctx: StageContext) -> StageResult:
    rows = ctx.require("flaky")["rows"][: ctx.input["rows"]]
    return StageResult(
        output={"total": sum(rows), "a": ctx.require("fan-a")["a"]},
        artifacts={"report.txt": f"{len(rows)} rows"},
    )


reliable = (
    WorkflowBuilder("reliable")
    .parallel(
        [
            define_stage(id="fan-a", execute=fan_a, retry=RETRY),
            define_stage(id="fan-b", execute=fan_b, retry=RETRY),
        ]
    )
    .pipe(
        define_async_batch_stage(
            id="batch", execute=batch_execute, check_completion=batch_check, retry=RETRY
        )
    )
    .pipe(define_stage(id="flaky", execute=flaky, retry=RETRY))
    .pipe(define_sleep_stage(id="nap", duration=3600, retry=RETRY))
    .pipe(define_signal_stage(id="approve", topic="go", payload=Go))
    .pipe(define_stage(id="finish", execute=finish, retry=RETRY))
    .build()
)

REGISTRY = WorkflowRegistry([reliable])


@dataclass
class Delivered:
    """What the outside world received: every event handed to the sink and the plugin."""

    sink: list[Event] = field(default_factory=list)
    audit: list[Event] = field(default_factory=list)


class RecordingSink:
    def __init__(self, into: list[Event]) -> None:
        self.into = into

    async def publish(self, event: Event) -> None:
        self.into.append(event)


@dataclass
class World:
    """The stores that outlive any process (in memory), and the clock."""

    external_transport: bool = False
    clock: FakeClock = field(default_factory=FakeClock)
    delivered: Delivered = field(default_factory=Delivered)
    generation: int = 0

    def __post_init__(self) -> None:
        OUTSIDE.clear()
        memory = InMemoryPersistence()
        self.memory = memory
        self.persistence: Persistence = memory
        self.blobs: BlobStore = InMemoryBlobStore()
        self.queue: Any = InMemoryJobQueue(self.clock, None if self.external_transport else memory)

    async def close(self) -> None:
        return None

    # --- reading the stores (the SQL world reads its tables) ---------------------------

    async def runs(self) -> list[RunRecord]:
        return self.memory.snapshot_runs()

    async def stages(self, run_id: str) -> list[StageRecord]:
        return self.memory.snapshot_stages(run_id)

    async def events(self) -> list[EventRecord]:
        return self.memory.snapshot_events()

    async def deliveries(self) -> list[Delivery]:
        return self.memory.snapshot_deliveries()

    async def jobs(self) -> list[JobMessage]:
        jobs: list[JobMessage] = self.queue.jobs()
        return jobs

    async def signals(self) -> list[SignalRecord]:
        return self.memory.snapshot_signals()

    # --- processes -----------------------------------------------------------------------

    def kernel(
        self, faults: FaultInjector | None = None
    ) -> tuple[Kernel, JobTransport, RecordingScheduler]:
        """A fresh kernel, as a newly started process builds it (its own ids and hints),
        on the stores, through `faults` when given."""
        self.generation += 1
        audit = define_plugin(
            id="audit",
            on=["stage.completed", "run.completed"],
            handle=self.delivered.audit.append,
        )
        persistence: Persistence = self.persistence
        transport: JobTransport = self.queue
        blobs: BlobStore = self.blobs
        sink: EventSink = RecordingSink(self.delivered.sink)
        if faults is not None:
            persistence = faults.persistence(persistence)
            transport = faults.job_transport(transport)
            blobs = faults.blob_store(blobs)
            sink = faults.event_sink(sink)
            audit = faults.plugin(audit)
        scheduler = RecordingScheduler()
        kernel = create_kernel(
            persistence=persistence,
            blob_store=blobs,
            job_transport=transport,
            event_sink=sink,
            scheduler=scheduler,
            clock=self.clock,
            registry=REGISTRY,
            plugins=[audit],
            ids=SequentialIds(prefix=f"g{self.generation}"),
            settings=SETTINGS,
        )
        return kernel, transport, scheduler

    async def create(self, kernel: Kernel, key: str, n: int) -> str:
        result = await kernel.dispatch(
            RunCreate(workflow_id="reliable", input={"n": n}, idempotency_key=key)
        )
        return result.run_id

    async def approve(self, kernel: Kernel, run_id: str, key: str) -> None:
        """The client's signal to the run (the same key on every retry: stored once)."""
        go = RunSignal(run_id=run_id, topic="go", payload={"rows": 40}, idempotency_key=key)
        await kernel.dispatch(go)

    async def settled(self) -> bool:
        """No run active, no event undelivered, no job queued."""
        if await self.jobs():
            return False
        if any(d.status != "delivered" for d in await self.deliveries()):
            return False
        return all(r.status.is_terminal for r in await self.runs())

    # --- what must hold ----------------------------------------------------------------

    async def final_state(self) -> dict[str, Any]:
        """Everything a user can observe of the finished runs, by idempotency key: status,
        output, each stage's status and output (ids and attempt counts aside)."""
        state: dict[str, Any] = {}
        for run in await self.runs():
            output = run.output
            if run.output_ref is not None:
                output = json.loads(await self.blobs.get(run.output_ref))
            stages = {}
            for s in await self.stages(run.run_id):
                value = s.output
                if s.output_ref is not None:
                    value = json.loads(await self.blobs.get(s.output_ref))
                artifacts = {
                    name: (await self.blobs.get(ref)).decode() for name, ref in s.artifacts.items()
                }
                stages[s.stage_id] = (s.status.value, value, artifacts)
            state[run.idempotency_key or run.run_id] = (run.status.value, output, stages)
        return state

    async def check_invariants(self) -> None:
        """No stage completed twice; every event delivered at least once to the sink and to
        the plugin, with one id per (run, seq); nothing left behind."""
        events = await self.events()
        runs = await self.runs()
        by_run: dict[str, list[int]] = defaultdict(list)
        for e in events:
            by_run[e.run_id].append(e.seq)
        for run in runs:
            assert by_run[run.run_id] == list(range(1, run.event_seq + 1)), "a gap in the events"
        completed = Counter(
            (e.run_id, e.payload["stage_id"]) for e in events if e.type == "stage.completed"
        )
        assert set(completed.values()) <= {1}, f"a stage completed twice: {completed}"

        stored = {e.event_id: (e.run_id, e.seq) for e in events}
        for who, got, wanted in (
            ("sink", self.delivered.sink, set(stored)),
            (
                "audit",
                self.delivered.audit,
                {e.event_id for e in events if e.type in ("stage.completed", "run.completed")},
            ),
        ):
            ids = {e.event_id for e in got}
            assert ids == wanted, f"{who} missed {sorted(wanted - ids)} / got extra {ids - wanted}"
            for ev in got:  # a redelivery carries the same id as the first delivery
                assert stored[ev.event_id] == (ev.run_id, ev.seq), f"{who}: {ev.event_id} changed"
        jobs = await self.jobs()
        assert not jobs, f"jobs left behind: {jobs}"
        undelivered = [d for d in await self.deliveries() if d.status != "delivered"]
        assert not undelivered, f"deliveries left behind: {undelivered}"
        for run in runs:
            assert run.status.is_terminal, run
        # The client's signal, however often it asked, is stored once and taken once.
        taken = [(s.run_id, s.consumed_by) for s in await self.signals()]
        assert sorted(taken) == sorted((r.run_id, "approve") for r in runs), taken
        for run in runs:
            await self._check_stream(run)

    async def _check_stream(self, run: RunRecord) -> None:
        """The flaky stage's stream: numbered 0, 1, 2... with no gap, at most one item per
        attempt (a write that failed was not stored, or its attempt died with it), closed
        last by the attempt that completed the stage."""
        async with self.persistence.transaction() as tx:
            items = await tx.streams.read(run.run_id, "progress")
            stage = {s.stage_id: s for s in await tx.stages.for_run(run.run_id)}["flaky"]
        assert [i.offset for i in items] == list(range(len(items))), "a gap in the stream"
        *written, close = items
        assert close.closed and close.attempt == stage.attempt, items
        attempts = [i.attempt for i in written]
        assert len(set(attempts)) == len(attempts), f"an attempt wrote twice: {items}"
        assert all(i.value == f"try {i.attempt}" for i in written), items
        assert written[-1].attempt == stage.attempt, "the completing attempt's item is missing"


class SqlWorld(World):
    """The same world on a SQL database (`SqlBackend`): the job queue is its jobs table,
    in the same database (transactions enqueue and ack)."""

    backend: SqlBackend

    @classmethod
    async def open(cls, url: str) -> SqlWorld:
        world = cls()
        world.backend = await SqlBackend.connect(url, clock=world.clock)
        world.persistence = world.backend.persistence
        world.queue = world.backend.job_transport
        world.blobs = world.backend.blob_store
        return world

    async def close(self) -> None:
        await self.backend.close()

    async def _table(self, table: Table) -> list[Any]:
        async with self.backend.engine.connect() as conn:
            return list(await conn.execute(select(table)))

    async def runs(self) -> list[RunRecord]:
        async with self.persistence.transaction() as tx:
            return await tx.runs.find(limit=10_000)

    async def stages(self, run_id: str) -> list[StageRecord]:
        async with self.persistence.transaction() as tx:
            return await tx.stages.for_run(run_id)

    async def events(self) -> list[EventRecord]:
        table = metadata.tables["stagewise_events"]
        rows = [_rows.event_from_row(r) for r in await self._table(table)]
        return sorted(rows, key=lambda e: (e.run_id, e.seq))

    async def deliveries(self) -> list[Delivery]:
        table = metadata.tables["stagewise_deliveries"]
        return [_rows.delivery_from_row(r) for r in await self._table(table)]

    async def jobs(self) -> list[JobMessage]:
        jobs: list[JobMessage] = await self.backend.job_transport.jobs()
        return jobs

    async def signals(self) -> list[SignalRecord]:
        table = metadata.tables["stagewise_signals"]
        return [_rows.signal_from_row(r) for r in await self._table(table)]
