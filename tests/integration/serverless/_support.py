"""What the serverless tests share: workflows, a deployment whose durable parts (database,
queue, blobs) outlive every invocation, and a persistence that can be made to fail."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from stagewise import (
    BlobStore,
    JobTransport,
    Kernel,
    KernelSettings,
    NotReady,
    Persistence,
    Ready,
    RunRecord,
    StageContext,
    StageRecord,
    Suspend,
    TransientError,
    Workflow,
    WorkflowBuilder,
    WorkflowRegistry,
    create_kernel,
    define_async_batch_stage,
    define_stage,
)
from stagewise.testing import (
    CollectingEventSink,
    FakeClock,
    InMemoryBlobStore,
    InMemoryJobQueue,
    InMemoryPersistence,
    SequentialIds,
)
from stagewise_serverless import (
    LambdaAdapter,
    ServerlessHost,
    ServerlessSettings,
    SqsJobTransport,
    TickScheduler,
)

from ._aws import SCHEDULED_EVENT, FakeContext, FakeSqs

# --- workflows ---------------------------------------------------------------------------


class Num(BaseModel):
    n: int


@dataclass
class Pipeline:
    """prepare(+1) -> [left(*2), batch(async: +100 once the outside job is done)] -> join."""

    workflow: Workflow
    executed: Counter[str]
    checks: Counter[str]


def pipeline(*, ready_after_checks: int = 2, poll_interval: float = 30.0) -> Pipeline:
    executed: Counter[str] = Counter()
    checks: Counter[str] = Counter()

    async def prepare(ctx: StageContext) -> Num:
        executed["prepare"] += 1
        return Num(n=ctx.input.n + 1)

    async def left(ctx: StageContext) -> Num:
        executed["left"] += 1
        return Num(n=ctx.input.n * 2)

    async def submit(ctx: StageContext) -> Suspend:
        executed["batch"] += 1
        return Suspend(
            state={"ticket": f"t-{ctx.input.n}", "n": ctx.input.n},
            poll_interval=poll_interval,
            max_wait=3600,
        )

    async def check(state: Any, ctx: StageContext) -> Ready | NotReady:
        checks[ctx.run_id] += 1
        if checks[ctx.run_id] < ready_after_checks:
            return NotReady()
        return Ready(Num(n=state["n"] + 100))

    async def join(ctx: StageContext) -> Num:
        executed["join"] += 1
        return Num(n=ctx.input["left"]["n"] + ctx.input["batch"]["n"])

    workflow = (
        WorkflowBuilder("pipeline", input=Num, output=Num)
        .pipe(define_stage(id="prepare", input=Num, output=Num, execute=prepare))
        .parallel(
            [
                define_stage(id="left", input=Num, output=Num, execute=left),
                define_async_batch_stage(
                    id="batch", input=Num, output=Num, execute=submit, check_completion=check
                ),
            ]
        )
        .pipe(define_stage(id="join", output=Num, execute=join))
        .build()
    )
    return Pipeline(workflow=workflow, executed=executed, checks=checks)


def single(
    workflow_id: str = "single",
    execute: Callable[[StageContext], Any] | None = None,
    **stage: Any,
) -> Workflow:
    """A one-stage workflow (stage id `only`)."""

    async def default(ctx: StageContext) -> dict[str, int]:
        return {"ok": 1}

    return (
        WorkflowBuilder(workflow_id)
        .pipe(define_stage(id="only", execute=execute or default, **stage))
        .build()
    )


# --- a persistence that can be made to fail ----------------------------------------------


class FlakyPersistence:
    """Wraps a persistence; `down_runs` makes locking those runs fail as a dropped database
    connection would, `down_ops` (e.g. `"stages.due_for_poll"`) fails those store calls."""

    def __init__(self, inner: Persistence) -> None:
        self.inner = inner
        self.down_runs: set[str] = set()
        self.down_ops: set[str] = set()

    def check(self, op: str, args: tuple[Any, ...]) -> None:
        locked = args[0] if op == "runs.load" else ()
        if op in self.down_ops or self.down_runs.intersection(locked):
            raise TransientError(f"connection to the database was lost ({op})")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.inner.transaction() as tx:
            yield _FlakyTx(self, tx)


class _FlakyTx:
    def __init__(self, owner: FlakyPersistence, tx: Any) -> None:
        for name in ("runs", "stages", "outbox", "idempotency", "workers"):
            setattr(self, name, _FlakyStore(owner, name, getattr(tx, name)))
        self.apply = tx.apply


class _FlakyStore:
    def __init__(self, owner: FlakyPersistence, name: str, inner: Any) -> None:
        self._owner, self._name, self._inner = owner, name, inner

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._inner, attr)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._owner.check(f"{self._name}.{attr}", args)
            return await target(*args, **kwargs)

        return call


# --- a deployment ------------------------------------------------------------------------


class Deployment:
    """The durable side of one deployment — persistence, job transport, blobs — and a fake
    clock. Every `host()` is a cold container: a fresh kernel and a fresh host over the same
    durable state, so nothing an earlier invocation kept in memory can help a later one."""

    def __init__(
        self,
        workflows: Sequence[Workflow],
        *,
        clock: FakeClock | None = None,
        persistence: Persistence | None = None,
        transport: JobTransport | None = None,
        blobs: BlobStore | None = None,
        sqs: bool = False,
        external: bool = False,
        settings: ServerlessSettings | None = None,
        kernel_settings: KernelSettings | None = None,
    ) -> None:
        self.registry = WorkflowRegistry(workflows)
        self.clock = clock or FakeClock()
        self.memory = InMemoryPersistence() if persistence is None else None
        self.persistence: Persistence = persistence or self.memory  # type: ignore[assignment]
        self.sqs: FakeSqs | None = None
        if sqs:
            self.sqs = FakeSqs(self.clock)
            self.transport: JobTransport = SqsJobTransport(
                self.sqs.send_message_batch, clock=self.clock
            )
        elif transport is not None:
            self.transport = transport
        else:
            joined = None if external or self.memory is None else self.memory
            self.transport = InMemoryJobQueue(self.clock, joined)
        self.blobs = blobs or InMemoryBlobStore()
        self.sink = CollectingEventSink()
        self.ids = SequentialIds()
        self.settings = settings or ServerlessSettings()
        self.kernel_settings = kernel_settings
        self.kernels: list[Kernel] = []

    def kernel(self) -> Kernel:
        kernel = create_kernel(
            persistence=self.persistence,
            blob_store=self.blobs,
            job_transport=self.transport,
            event_sink=self.sink,
            scheduler=TickScheduler(),
            clock=self.clock,
            registry=self.registry,
            ids=self.ids,
            settings=self.kernel_settings,
        )
        self.kernels.append(kernel)
        return kernel

    def host(self, settings: ServerlessSettings | None = None) -> ServerlessHost:
        return ServerlessHost(
            kernel=self.kernel(),
            job_transport=self.transport,
            worker_id=f"fn-{len(self.kernels)}",
            settings=settings or self.settings,
            clock=self.clock,
        )

    def lambda_adapter(self) -> LambdaAdapter:
        return LambdaAdapter(self.host)

    def context(self, remaining_ms: int = 60_000) -> FakeContext:
        return FakeContext(self.clock, remaining_ms)

    async def create_run(self, workflow_id: str, input: Any = None) -> str:
        from stagewise import RunCreate

        result = await self.kernel().dispatch(RunCreate(workflow_id=workflow_id, input=input))
        return result.run_id

    async def get_run(self, run_id: str) -> RunRecord:
        async with self.persistence.transaction() as tx:
            run = await tx.runs.get(run_id)
        assert run is not None
        return run

    async def stages(self, run_id: str) -> dict[str, StageRecord]:
        async with self.persistence.transaction() as tx:
            return {s.stage_id: s for s in await tx.stages.for_run(run_id)}

    async def aclose(self) -> None:
        for kernel in self.kernels:
            await kernel.aclose()


async def drive_pull(d: Deployment, run_id: str, *, invocations: int = 300) -> int:
    """Alternate scheduled ticks and job invocations, each on a fresh host, until the run
    finishes; the clock moves only when an invocation finds nothing to do. Returns how many
    invocations it took."""
    for i in range(invocations):
        tick = await d.host().run_maintenance_tick()
        assert not tick.errors, tick.errors
        jobs = await d.host().process_available_jobs(max_jobs=10)
        if (await d.get_run(run_id)).status.is_terminal:
            return 2 * (i + 1)
        if jobs.processed == 0 and tick.claimed == tick.resumed == 0:
            d.clock.advance(5)
    raise AssertionError(f"run {run_id} did not finish in {invocations} rounds")


async def drive_sqs(d: Deployment, run_id: str, *, invocations: int = 300) -> int:
    """The same through Lambda: a scheduled maintenance event, then an SQS batch, each
    handled by a fresh `LambdaAdapter` (a cold container)."""
    assert d.sqs is not None
    for i in range(invocations):
        ticked = await d.lambda_adapter().handle_maintenance_event(SCHEDULED_EVENT, d.context())
        assert not ticked["maintenance"]["errors"], ticked
        event = d.sqs.receive(10)
        if event["Records"]:
            response = await d.lambda_adapter().handle_sqs_event(event, d.context())
            d.sqs.settle(event, response)
        if (await d.get_run(run_id)).status.is_terminal:
            return 2 * (i + 1)
        if not event["Records"] and not ticked["maintenance"]["resumed"]:
            d.clock.advance(5)
    raise AssertionError(f"run {run_id} did not finish in {invocations} rounds")
