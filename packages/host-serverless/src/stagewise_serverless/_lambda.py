"""AWS Lambda entry points over a `ServerlessHost`: an SQS batch, or a scheduled tick.

    # handler.py — nothing is built at import time
    async def build() -> ServerlessHost: ...      # called once per container
    app = LambdaAdapter(build)
    sqs_handler = app.sqs_handler                 # SQS event source, ReportBatchItemFailures
    maintenance_handler = app.maintenance_handler # EventBridge schedule

The partial batch response lists exactly the records whose `JobResult.redeliver` is True,
so SQS deletes every other record and delivers only those again. A record is redelivered
when it was not processed: a transient error before anything committed, too little time
left in the invocation, a message that came before its attempt was due, or a workflow or
stage this deployment does not know. Every outcome the kernel recorded — including a stage
that failed for good, or a failed attempt whose retry the kernel already enqueued as a new
message — is acknowledged: retries are the kernel's (per the stage's `RetryPolicy`), not
the queue's. A malformed body is acknowledged too (logged with its reason): no delivery can
parse it.

The synchronous handlers run the async ones on one event loop kept for the container's
life, so connection pools built by `build` stay usable from one invocation to the next.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from stagewise_serverless._host import ServerlessHost
from stagewise_serverless._results import JobCounts

logger = logging.getLogger("stagewise.serverless")

T = TypeVar("T")

HostFactory = Callable[[], ServerlessHost | Awaitable[ServerlessHost]]


class LambdaContext(Protocol):
    """The part of Lambda's context object the adapter reads."""

    def get_remaining_time_in_millis(self) -> int: ...


class LambdaAdapter:
    """Lambda handlers for one function. The host is built on the first invocation of a
    container and reused by the next ones (Lambda runs one invocation at a time in a
    container); it keeps nothing that matters for correctness."""

    def __init__(self, build: HostFactory) -> None:
        self._build = build
        self._host: ServerlessHost | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def host(self) -> ServerlessHost:
        """The container's host, built on first use. If building fails, the next
        invocation tries again."""
        if self._host is None:
            built = self._build()
            self._host = await built if inspect.isawaitable(built) else built
        return self._host

    # --- async entry points ---------------------------------------------------------------

    async def handle_sqs_event(
        self, event: Mapping[str, Any], context: LambdaContext | None = None
    ) -> dict[str, Any]:
        """Handle an SQS batch; returns `{"batchItemFailures": [{"itemIdentifier": id}]}`.

        Records are handled one after the other; once the next one would not finish in the
        time Lambda reports as left, it and every later record are reported as failures
        without starting.

        Raises:
            ValueError: the event is not an SQS batch (no `Records` list).
            Exception: whatever building the host raises; Lambda then retries the whole
                batch, which is right when nothing could be processed.
        """
        records = event.get("Records")
        if not isinstance(records, list):
            raise ValueError("not an SQS event: it has no 'Records' list")
        host = await self.host()
        deadline = _deadline(host, context)
        failures: list[dict[str, str]] = []
        for record in records:
            record = record if isinstance(record, Mapping) else {}
            # An empty identifier makes Lambda retry the whole batch: the safe side.
            message_id = str(record.get("messageId") or "")
            result = await host.handle_job(record.get("body"), deadline=deadline)
            if result.redeliver:
                failures.append({"itemIdentifier": message_id})
                logger.warning(
                    "SQS message %s will be delivered again: %s %s",
                    message_id,
                    result.outcome,
                    result.error or "",
                )
        return {"batchItemFailures": failures}

    async def handle_maintenance_event(
        self, event: Mapping[str, Any] | None = None, context: LambdaContext | None = None
    ) -> dict[str, Any]:
        """Run one maintenance tick (a scheduled event; its content is not read), then,
        when `settings.jobs_after_tick` is set, jobs from the transport in the time left.

        Returns `{"maintenance": {...counts}, "jobs": {...counts} or None}`.
        """
        host = await self.host()
        deadline = _deadline(host, context)
        ticked = await host.run_maintenance_tick(deadline=deadline)
        jobs: JobCounts | None = None
        if host.settings.jobs_after_tick:
            jobs = await host.process_available_jobs(
                max_jobs=host.settings.jobs_after_tick, deadline=deadline
            )
        return {"maintenance": ticked.to_json(), "jobs": None if jobs is None else jobs.to_json()}

    # --- Lambda's synchronous handlers ----------------------------------------------------

    def sqs_handler(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        """The function handler for an SQS event source (enable ReportBatchItemFailures)."""
        return self._run(self.handle_sqs_event(event, context))

    def maintenance_handler(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        """The function handler for a scheduled (EventBridge) maintenance event."""
        return self._run(self.handle_maintenance_event(event, context))

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(work)

    def close(self) -> None:
        """Close the container's event loop (for tests and local runs; Lambda never needs it)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.close()
        self._loop = None


def _deadline(host: ServerlessHost, context: LambdaContext | None) -> datetime | None:
    if context is None:
        return None
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None
    return host.clock.now() + timedelta(milliseconds=float(remaining()))
