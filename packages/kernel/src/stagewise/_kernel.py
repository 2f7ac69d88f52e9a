"""The kernel: one `dispatch` for every command, one handler per command."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, overload

from pydantic import BaseModel, ValidationError

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
    StreamWrite,
    StreamWriteResult,
    WorkerBeat,
    WorkerBeatResult,
    WorkerStop,
    WorkerStopResult,
)
from stagewise._conflicts import retrying_conflicts
from stagewise._errors import (
    InvalidCommandError,
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
from stagewise._h_streams import stream_write
from stagewise._h_workers import worker_beat, worker_stop
from stagewise._kernel_reads import KernelReads
from stagewise._plugins import Plugin, PluginRunner
from stagewise._ports import (
    BlobStore,
    ChangeFeed,
    Clock,
    EventSink,
    IdGenerator,
    JobTransport,
    NoChangeFeed,
    Persistence,
    Scheduler,
)
from stagewise._runtime import Ports, Runtime
from stagewise._settings import KernelSettings
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
    StreamWrite: stream_write,
    WorkerBeat: worker_beat,
    WorkerStop: worker_stop,
}

GROUPED: frozenset[type[BaseModel]] = frozenset({RunCreate, JobExecute})
"""Commands whose transactions are all group-commit steps: a step that the database aborts
for a conflict is tried again by itself (`_conflicts`); `job.execute` must not be tried
again as a whole, since its user code runs between its transactions."""


class Kernel(KernelReads):
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
    async def dispatch(self, command: StreamWrite) -> StreamWriteResult: ...
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
    changes: ChangeFeed | None = None,
) -> Kernel:
    """Wire a kernel to its ports (the one composition root of an application).

    `changes` tells readers that wait (`wait_for_run`, `get_event`, `read_stream`) of other
    processes' commits; without one they hear of this process's at once and of others'
    at their polls.

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
        changes=changes or NoChangeFeed(),
    )
    runtime = Runtime(
        ports=ports,
        registry=registry,
        plugins=PluginRunner(plugins),
        settings=settings or KernelSettings(),
    )
    return Kernel(runtime)
