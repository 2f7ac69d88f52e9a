"""The kernel: one `dispatch` for every command, one handler per command."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, overload

from pydantic import BaseModel, ValidationError

from stagewise._attempt import stored_output
from stagewise._clock import UuidIds
from stagewise._commands import (
    COMMAND_ADAPTER,
    CommandResult,
    HeartbeatResult,
    JobExecute,
    JobExecuteResult,
    JobHeartbeat,
    JobRelease,
    JobReleaseResult,
    LeaseReapResult,
    LeaseReapStale,
    OutboxFlush,
    OutboxFlushResult,
    PluginReplayDLQ,
    PluginReplayResult,
    RunCancel,
    RunCancelResult,
    RunClaimPending,
    RunClaimPendingResult,
    RunCreate,
    RunCreateResult,
    RunPurge,
    RunPurgeResult,
    RunRerunFrom,
    RunRerunResult,
    RunSignal,
    RunSignalResult,
    RunTransition,
    RunTransitionResult,
    StagePollResult,
    StagePollSuspended,
    WorkerBeat,
    WorkerBeatResult,
    WorkerStop,
    WorkerStopResult,
)
from stagewise._conflicts import retrying_conflicts
from stagewise._errors import (
    InvalidCommandError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
)
from stagewise._h_jobs import job_execute
from stagewise._h_leases import job_heartbeat, job_release
from stagewise._h_maintenance import lease_reap_stale, stage_poll_suspended
from stagewise._h_outbox import outbox_flush, plugin_replay_dlq
from stagewise._h_purge import run_purge
from stagewise._h_runs import (
    run_cancel,
    run_claim_pending,
    run_create,
    run_rerun_from,
    run_transition,
)
from stagewise._h_signals import run_signal
from stagewise._h_workers import worker_beat, worker_stop
from stagewise._plugins import Plugin, PluginRunner
from stagewise._ports import (
    BlobStore,
    Clock,
    EventSink,
    IdGenerator,
    JobTransport,
    Persistence,
    Scheduler,
)
from stagewise._query import LogPage, RunFilter, RunPage
from stagewise._reads import read_logs, read_runs
from stagewise._records import ErrorInfo, Json, RunRecord, RunValueRecord
from stagewise._runtime import Ports, Runtime
from stagewise._settings import KernelSettings
from stagewise._states import RunStatus
from stagewise._waiters import read_run, wait_for_run, wait_for_value
from stagewise._workflow import WorkflowSource, _summary

Handler = Callable[[Runtime, Any], Awaitable[CommandResult]]

HANDLERS: dict[type[BaseModel], Handler] = {
    RunCreate: run_create,
    RunClaimPending: run_claim_pending,
    JobExecute: job_execute,
    RunTransition: run_transition,
    StagePollSuspended: stage_poll_suspended,
    LeaseReapStale: lease_reap_stale,
    OutboxFlush: outbox_flush,
    RunCancel: run_cancel,
    RunSignal: run_signal,
    RunRerunFrom: run_rerun_from,
    RunPurge: run_purge,
    PluginReplayDLQ: plugin_replay_dlq,
    JobHeartbeat: job_heartbeat,
    JobRelease: job_release,
    WorkerBeat: worker_beat,
    WorkerStop: worker_stop,
}

GROUPED: frozenset[type[BaseModel]] = frozenset({RunCreate, JobExecute})
"""Commands whose transactions are all group-commit steps: a step that the database aborts
for a conflict is tried again by itself (`_conflicts`); `job.execute` must not be tried
again as a whole, since its user code runs between its transactions."""


class Kernel:
    """Dispatches commands against the ports it was built with. Build it with
    `create_kernel`; it keeps no state that matters between commands except the attempts
    running in this process (so that cancellation reaches them)."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    @property
    def settings(self) -> KernelSettings:
        return self._rt.settings

    @property
    def registry(self) -> WorkflowSource:
        return self._rt.registry

    @property
    def clock(self) -> Clock:
        """The clock its leases, due times and wake-up hints are on (on the SQL backends,
        the database's by default)."""
        return self._rt.ports.clock

    @property
    def in_flight(self) -> int:
        """Attempts executing in this process right now."""
        return len(self._rt.inflight)

    @property
    def sync_stages_running(self) -> int:
        """Calls of sync (`def`) stages on this process's thread pool right now: real work
        that no clock can hurry (a driver on a fake clock waits for it)."""
        return self._rt.threads_busy

    @overload
    async def dispatch(self, command: RunCreate) -> RunCreateResult: ...
    @overload
    async def dispatch(self, command: RunClaimPending) -> RunClaimPendingResult: ...
    @overload
    async def dispatch(self, command: JobExecute) -> JobExecuteResult: ...
    @overload
    async def dispatch(self, command: RunTransition) -> RunTransitionResult: ...
    @overload
    async def dispatch(self, command: StagePollSuspended) -> StagePollResult: ...
    @overload
    async def dispatch(self, command: LeaseReapStale) -> LeaseReapResult: ...
    @overload
    async def dispatch(self, command: OutboxFlush) -> OutboxFlushResult: ...
    @overload
    async def dispatch(self, command: RunCancel) -> RunCancelResult: ...
    @overload
    async def dispatch(self, command: RunSignal) -> RunSignalResult: ...
    @overload
    async def dispatch(self, command: RunRerunFrom) -> RunRerunResult: ...
    @overload
    async def dispatch(self, command: RunPurge) -> RunPurgeResult: ...
    @overload
    async def dispatch(self, command: PluginReplayDLQ) -> PluginReplayResult: ...
    @overload
    async def dispatch(self, command: JobHeartbeat) -> HeartbeatResult: ...
    @overload
    async def dispatch(self, command: JobRelease) -> JobReleaseResult: ...
    @overload
    async def dispatch(self, command: WorkerBeat) -> WorkerBeatResult: ...
    @overload
    async def dispatch(self, command: WorkerStop) -> WorkerStopResult: ...
    @overload
    async def dispatch(self, command: Mapping[str, Any]) -> CommandResult: ...

    async def dispatch(self, command: BaseModel | Mapping[str, Any]) -> CommandResult:
        """Run one command and return its typed result.

        Raises:
            InvalidCommandError: the command (model or dict) does not validate.
            StagewiseError: whatever the command refuses (each handler documents its own).
        """
        if isinstance(command, Mapping):
            try:
                command = COMMAND_ADAPTER.validate_python(command)
            except ValidationError as exc:
                raise InvalidCommandError(
                    f"invalid command: {_summary(exc)}",
                    [
                        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                        for e in exc.errors(include_url=False, include_input=False)
                    ],
                ) from None
        handler = HANDLERS.get(type(command))
        if handler is None:
            raise InvalidCommandError(f"{type(command).__name__} is not a stagewise command")
        if type(command) in GROUPED:  # their steps are tried again on their own
            return await handler(self._rt, command)
        checked = command
        what = str(getattr(checked, "type", type(checked).__name__))
        return await retrying_conflicts(lambda: handler(self._rt, checked), what)

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run as stored now, or None when there is no such run (a read in a short
        transaction of its own)."""
        return await read_run(self._rt.ports.persistence, run_id)

    async def list_runs(
        self, where: RunFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> RunPage:
        """Runs that pass `where` (every run when None), newest first, `limit` at a time:
        pass a page's `next_cursor` as `cursor` for the page after it. Walking the pages
        lists every run that was there exactly once, however many are created meanwhile
        (a plain read in a short transaction of its own; see `RunFilter` for the filters).

            where = RunFilter(status="failed", metadata={"team": "a"})
            page = await kernel.list_runs(where)
            while page.next_cursor:
                page = await kernel.list_runs(where, cursor=page.next_cursor)

        Raises:
            InvalidCursorError: `cursor` is not one a page gave (also a `ValueError`).
            InvalidInputError: `limit` is not from 1 to 10,000.
        """
        where = where or RunFilter()
        return await read_runs(self._rt.ports.persistence, where, limit=limit, cursor=cursor)

    async def run_logs(
        self, run_id: str, *, after: int = 0, stage_id: str | None = None, limit: int = 1000
    ) -> LogPage:
        """The run's log lines after `after` (a `LogLine.id`; 0: from the start), of one
        stage when `stage_id` is given, in the order they were written, at most `limit`.

        Follow a run by passing each page's `next_after` as `after` for the next read: no
        line is missed or shown twice, and once `LogPage.status` is terminal and `more` is
        false, there are no more lines to come. A plain read in a short transaction.

        Raises:
            RunNotFoundError: there is no such run.
            InvalidInputError: `limit` is not from 1 to 10,000, or `after` is negative.
        """
        persistence = self._rt.ports.persistence
        return await read_logs(persistence, run_id, after=after, stage_id=stage_id, limit=limit)

    async def get_event(
        self,
        run_id: str,
        key: str,
        *,
        timeout: float | None = 0,  # noqa: ASYNC109 (the kernel's clock, not the loop's)
        poll_interval: float = 0.5,
    ) -> Any:
        """The latest value the run published under `key` (`ctx.set_event`), or None.

        With a `timeout` (seconds; None: as long as it takes) it waits until the value is
        set: a commit of this process that publishes it ends the wait at once, one of
        another process is found by reading every `poll_interval` seconds. It returns None
        when the time passes, or as soon as the run ends without the value.

        Raises:
            RunNotFoundError: there is no such run.
        """
        rt = self._rt
        record = await wait_for_value(
            rt.value_waiters,
            rt.ports.persistence,
            rt.ports.clock,
            run_id,
            key,
            timeout=timeout,
            poll_interval=poll_interval,
        )
        return None if record is None else record.value

    async def list_events(self, run_id: str) -> list[RunValueRecord]:
        """Every key the run published, with its latest value, who set it and when.

        Raises:
            RunNotFoundError: there is no such run.
        """
        async with self._rt.ports.persistence.transaction() as tx:
            values = await tx.values.for_run(run_id)
            if not values and await tx.runs.get(run_id) is None:
                raise RunNotFoundError(run_id)
        return values

    async def wait_for_run(
        self,
        run_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the kernel's clock, not the loop's)
        poll_interval: float = 1.0,
    ) -> RunRecord:
        """Wait until the run is COMPLETED, FAILED or CANCELLED and return it.

        A transaction of this process that ends the run resolves the wait at once; a run
        that another process ends is found by reading it every `poll_interval` seconds.
        Both intervals are on the kernel's clock.

        Raises:
            RunNotFoundError: there is no such run.
            TimeoutError: the run had not ended after `timeout` seconds.
            ValueError: `poll_interval` is not positive.
        """
        rt = self._rt
        return await wait_for_run(
            rt.waiters,
            rt.ports.persistence,
            rt.ports.clock,
            run_id,
            timeout=timeout,
            poll_interval=poll_interval,
            running_here=rt.works_on(run_id),
        )

    async def run_output(
        self,
        run_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the kernel's clock, not the loop's)
        poll_interval: float = 1.0,
    ) -> Json:
        """Wait until the run ends (as `wait_for_run`) and return its output: read from the
        blob store when it was too large to keep on the run's row.

        Raises:
            RunFailedError: the run failed (its error's type and message are attributes).
            RunCancelledError: the run was cancelled.
            RunNotFoundError, TimeoutError, ValueError: as `wait_for_run`.
        """
        run = await self.wait_for_run(run_id, timeout=timeout, poll_interval=poll_interval)
        if run.status is RunStatus.FAILED:
            error = run.error or ErrorInfo("UnknownError", "no error was recorded")
            raise RunFailedError(run_id, error.type, error.message)
        if run.status is RunStatus.CANCELLED:
            raise RunCancelledError(run_id)
        return await stored_output(self._rt.ports.blob_store, run)

    async def aclose(self) -> None:
        """Release the kernel's thread pool (for sync stages)."""
        self._rt.close()


def create_kernel(
    *,
    persistence: Persistence,
    blob_store: BlobStore,
    job_transport: JobTransport,
    event_sink: EventSink,
    scheduler: Scheduler,
    clock: Clock,
    registry: WorkflowSource,
    plugins: Sequence[Plugin] = (),
    ids: IdGenerator | None = None,
    settings: KernelSettings | None = None,
) -> Kernel:
    """Wire a kernel to its ports (the one composition root of an application).

    Raises:
        WorkflowDefinitionError: two plugins share an id.
    """
    ports = Ports(
        persistence=persistence,
        blob_store=blob_store,
        job_transport=job_transport,
        event_sink=event_sink,
        scheduler=scheduler,
        clock=clock,
        ids=ids or UuidIds(),
    )
    runtime = Runtime(
        ports=ports,
        registry=registry,
        plugins=PluginRunner(plugins),
        settings=settings or KernelSettings(),
    )
    return Kernel(runtime)
