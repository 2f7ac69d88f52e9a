"""The engine in five lines: a database URL and workflows in, runs and their results out.

    async with Engine("sqlite:///app.db", [checkout]) as engine:
        output = await engine.run("checkout", {"order_id": "o-1", "amount": 10})

`Engine` is composition, not a new layer: it opens a `SqlBackend`, builds the kernel and (by
default) a node host serving in this process with `node_host`, and closes them in the
reverse order. Every method is one kernel command or read; `engine.kernel`, `engine.host`
and `engine.backend` are there for everything else. `SyncEngine` (`_sync`) is the same for
code that has no event loop of its own.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypedDict, Unpack

from stagewise import (
    EventSink,
    Kernel,
    KernelSettings,
    LogPage,
    Plugin,
    RunCancel,
    RunCreate,
    RunFilter,
    RunPage,
    RunRecord,
    RunRerunFrom,
    RunSignal,
    StreamItemRecord,
    Workflow,
    WorkflowRegistry,
    WorkflowSource,
)
from stagewise_node._compose import node_host
from stagewise_node._host import NodeHost
from stagewise_node._settings import NodeHostSettings
from stagewise_sql import SqlBackend

Workflows = WorkflowSource | Workflow | Iterable[Workflow]


class EngineOptions(TypedDict, total=False):
    """What `Engine` and `SyncEngine` take besides the URL and the workflows."""

    worker: bool
    """Serve runs in this process (a node host; the default), or False for a client only."""
    worker_id: str | None
    """The node host's worker id (default: `host-pid`)."""
    settings: NodeHostSettings | None
    """The node host's settings (concurrency, intervals, drain deadline)."""
    kernel_settings: KernelSettings | None
    """The kernel's (leases, sizes)."""
    event_sink: EventSink | None
    """Where the outbox delivers events (without one: to nobody but the plugins)."""
    plugins: Iterable[Plugin]
    """The kernel's plugins."""
    migrate: bool
    """Create or upgrade the schema on open (the default). False: the database must be at
    this code's revision already, as after `stagewise db upgrade`."""


class Engine:
    """stagewise embedded in an application: a database and the workflows it runs.

    Use it as an async context manager (or `await engine.open()` / `await engine.close()`).
    With `worker=True` (the default) a node host serves in this process: runs started here
    begin at once in its slots, and runs started by others are claimed as by any worker.
    With `worker=False` it is a client: it creates, reads and cancels runs that separate
    `stagewise worker` processes execute.

    Closing drains the host (in-flight stages may finish for `settings.drain_timeout`
    seconds), delivers the outbox's pending events to `event_sink` and the plugins, then
    closes the database.
    """

    def __init__(self, url: str, workflows: Workflows, **options: Unpack[EngineOptions]) -> None:
        """
        Args:
            url: `sqlite:///app.db` (created when missing) or `postgresql://user@host/db`.
            workflows: a workflow, several, or a `WorkflowRegistry`.
            options: `EngineOptions` (worker, worker_id, settings, kernel_settings,
                event_sink, plugins, migrate).
        """
        self.url = url
        self.registry = _registry(workflows)
        self._worker = options.get("worker", True)
        self._worker_id = options.get("worker_id")
        self._settings = options.get("settings")
        self._kernel_settings = options.get("kernel_settings")
        self._event_sink = options.get("event_sink")
        self._plugins = tuple(options.get("plugins", ()))
        self._migrate = options.get("migrate", True)
        self._backend: SqlBackend | None = None
        self._kernel: Kernel | None = None
        self._host: NodeHost | None = None

    # --- opening and closing -------------------------------------------------------------

    async def open(self) -> None:
        """Connect (migrating when allowed) and start the host.

        Raises:
            RuntimeError: the engine is open already.
            StagewiseError: the database cannot be opened (`SqlBackend.connect`), or the
                host cannot start.
        """
        if self._backend is not None:
            raise RuntimeError("the engine is open already")
        backend = await SqlBackend.connect(self.url, migrate=self._migrate)
        try:
            if self._worker:
                host = node_host(
                    backend,
                    self.registry,
                    worker_id=self._worker_id,
                    settings=self._settings,
                    kernel_settings=self._kernel_settings,
                    event_sink=self._event_sink,
                    plugins=self._plugins,
                )
                kernel = host.kernel
                await host.start()
                self._host = host
            else:
                kernel = backend.kernel(
                    self.registry,
                    event_sink=self._event_sink,
                    plugins=self._plugins,
                    settings=self._kernel_settings,
                )
        except BaseException:
            await backend.close()
            raise
        self._backend, self._kernel = backend, kernel

    async def close(self) -> None:
        """Drain and stop the host (which flushes the outbox), then close the database.
        Safe to call twice, and on an engine that never opened."""
        backend, kernel, host = self._backend, self._kernel, self._host
        self._backend = self._kernel = self._host = None
        try:
            if host is not None:
                await host.stop()
            elif kernel is not None:
                await kernel.dispatch({"type": "outbox.flush"})  # a client's own events
        finally:
            if kernel is not None:
                await kernel.aclose()
            if backend is not None:
                await backend.close()

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the parts -----------------------------------------------------------------------

    @property
    def kernel(self) -> Kernel:
        """The kernel, for any command (`kernel.dispatch`).

        Raises:
            RuntimeError: the engine is not open."""
        if self._kernel is None:
            raise RuntimeError("the engine is not open: use `async with Engine(...)`")
        return self._kernel

    @property
    def host(self) -> NodeHost | None:
        """The node host serving in this process (None for a client, or when closed)."""
        return self._host

    @property
    def backend(self) -> SqlBackend:
        """The database (`SqlBackend`).

        Raises:
            RuntimeError: the engine is not open."""
        if self._backend is None:
            raise RuntimeError("the engine is not open: use `async with Engine(...)`")
        return self._backend

    # --- runs ----------------------------------------------------------------------------

    async def start(
        self,
        workflow_id: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        config: Mapping[str, dict[str, Any]] | None = None,
        priority: int = 0,
        metadata: Mapping[str, str] | None = None,
        deadline: datetime | None = None,
    ) -> str:
        """Create a run and return its id. With a host serving here and a free slot, its
        first stage starts at once in this process; otherwise any worker claims it.
        `metadata` labels it, to find it by (`list_runs(RunFilter(metadata=...))`); a
        `deadline` (aware) fails it with `DeadlineExceededError` if it has not ended by
        then (so does the workflow's `timeout`).

        Raises:
            WorkflowNotFoundError: no such workflow is registered.
            InvalidRunInputError, InvalidConfigError, PayloadTooLargeError: the input or
                config is refused (nothing is created).
            IdempotencyKeyReusedError: the key was used for another request.
        """
        command = RunCreate(
            workflow_id=workflow_id,
            input=input,
            config=None if config is None else dict(config),
            idempotency_key=idempotency_key,
            priority=priority,
            metadata=dict(metadata or {}),
            deadline=deadline,
        )
        host = self._host
        result = await (host.submit(command) if host else self.kernel.dispatch(command))
        return result.run_id

    async def wait(self, run_id: str, *, timeout: float | None = None) -> RunRecord:  # noqa: ASYNC109
        """Wait until the run is COMPLETED, FAILED or CANCELLED and return its record.

        Raises:
            RunNotFoundError: there is no such run.
            TimeoutError: it had not ended after `timeout` seconds.
        """
        return await self.kernel.wait_for_run(run_id, timeout=timeout, poll_interval=0.2)

    async def result(self, run_id: str, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Wait until the run ends and return its output.

        Raises:
            RunFailedError: the run failed (`error_type`, `error_message`).
            RunCancelledError: the run was cancelled.
            RunNotFoundError, TimeoutError: as `wait`.
        """
        return await self.kernel.run_output(run_id, timeout=timeout, poll_interval=0.2)

    async def run(
        self,
        workflow_id: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """Start a run and return its output once it has completed (`start`, then
        `result`); raises as both do."""
        run_id = await self.start(workflow_id, input, idempotency_key=idempotency_key)
        return await self.result(run_id, timeout=timeout)

    async def get(self, run_id: str) -> RunRecord | None:
        """The run as stored now, or None when there is no such run."""
        return await self.kernel.get_run(run_id)

    async def list_runs(
        self, where: RunFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> RunPage:
        """Runs newest first, a page at a time (`Kernel.list_runs`: filters by status,
        workflow, time range and metadata; pass `next_cursor` for the next page)."""
        return await self.kernel.list_runs(where, limit=limit, cursor=cursor)

    async def logs(self, run_id: str, *, after: int = 0, stage_id: str | None = None) -> LogPage:
        """The run's log lines after line `after`, in order (`Kernel.run_logs`)."""
        return await self.kernel.run_logs(run_id, after=after, stage_id=stage_id)

    async def signal(
        self, run_id: str, topic: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> str | None:
        """Send a signal to the run (`RunSignal`): the stage waiting on `topic` takes it
        and the run goes on, or the run's mailbox keeps it for the next wait on it. The
        stage that took it, or None.

        Raises:
            RunNotFoundError: there is no such run.
            RunNotActiveError: the run has ended.
            InvalidInputError: the waiting stage's payload model refuses the payload.
        """
        command = RunSignal(
            run_id=run_id, topic=topic, payload=payload, idempotency_key=idempotency_key
        )
        return (await self.kernel.dispatch(command)).consumed_by

    async def get_event(
        self,
        run_id: str,
        key: str,
        *,
        timeout: float | None = 0,  # noqa: ASYNC109 (the kernel's clock, not the loop's)
    ) -> Any:
        """The latest value the run published under `key` (`ctx.set_event`), waiting up to
        `timeout` seconds for it (None: until it is set or the run ends); None if there is
        none (`Kernel.get_event`)."""
        return await self.kernel.get_event(run_id, key, timeout=timeout, poll_interval=0.2)

    def read_stream(
        self, run_id: str, key: str, *, offset: int = 0
    ) -> AsyncGenerator[StreamItemRecord, None]:
        """The run's stream `key` (`ctx.write_stream`) from `offset`, item by item as it is
        written, until it is closed or the run ends (`Kernel.read_stream`)::

            async for item in engine.read_stream(run_id, "tokens"):
                print(item.value, end="", flush=True)
        """
        return self.kernel.read_stream(run_id, key, offset=offset, poll_interval=0.2)

    async def cancel(self, run_id: str, reason: str | None = None) -> bool:
        """Cancel the run and its unfinished stages (running attempts are told through
        `ctx.cancelled`). False when it had ended already.

        Raises:
            RunNotFoundError: there is no such run.
        """
        result = await self.kernel.dispatch(RunCancel(run_id=run_id, reason=reason))
        return result.cancelled

    async def rerun(self, run_id: str, from_stage: str) -> list[str]:
        """Run an ended run again from `from_stage`; the ids of the stages reset.

        Raises:
            RunNotFoundError, StageNotFoundError: no such run or stage.
            InvalidTransitionError: the run has not ended.
            ConflictError: a stage before `from_stage` did not complete.
        """
        result = await self.kernel.dispatch(RunRerunFrom(run_id=run_id, stage_id=from_stage))
        return list(result.reset_stages)


def _registry(workflows: Workflows) -> WorkflowSource:
    if isinstance(workflows, Workflow):
        return WorkflowRegistry([workflows])
    if isinstance(workflows, WorkflowRegistry) or not isinstance(workflows, Iterable):
        return workflows
    items = list(workflows)
    for item in items:
        if not isinstance(item, Workflow):
            raise TypeError(f"workflows must be Workflow objects, got {type(item).__name__}")
    return WorkflowRegistry(items)
