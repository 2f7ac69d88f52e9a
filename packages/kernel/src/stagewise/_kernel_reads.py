"""The kernel's reads: runs, their logs, the values they publish, their streams, and
waiting for any of these (the `Kernel`'s methods that are not commands)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from stagewise._attempt import stored_output
from stagewise._errors import RunCancelledError, RunFailedError, RunNotFoundError
from stagewise._query import LogPage, RunFilter, RunPage
from stagewise._reads import read_logs, read_runs
from stagewise._records import ErrorInfo, Json, RunRecord, RunValueRecord, StreamItemRecord
from stagewise._runtime import Runtime
from stagewise._states import RunStatus
from stagewise._stream_reader import read_stream
from stagewise._waiters import read_run, wait_for_run, wait_for_value


class KernelReads:
    """Reading what the kernel's commands wrote (mixed into `Kernel`)."""

    _rt: Runtime

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
            rt.ports.changes,
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

    def read_stream(
        self, run_id: str, key: str, *, offset: int = 0, poll_interval: float = 0.5
    ) -> AsyncGenerator[StreamItemRecord, None]:
        """The run's stream `key` (`ctx.write_stream`), item by item from `offset` (0: the
        start), as it is written: an async iterator that ends after the item that closes
        the stream (`ctx.close_stream`, not yielded), or once the run has ended and every
        item is read. A stream never written reads as empty, and waits like any other.

            async for item in kernel.read_stream(run_id, "tokens"):
                print(item.value, end="", flush=True)

        An item is there as soon as its write returns; a commit of this process wakes the
        reader at once, one of another process when the change feed hints at it (else
        after `poll_interval` seconds). Items of an attempt that was retried stay: each
        says its `stage_id` and `attempt`, so a reader can tell them apart.

        Raises:
            RunNotFoundError: there is no such run.
            ValueError: a negative offset, or a poll interval that is not positive.
        """
        rt = self._rt
        return read_stream(
            rt.stream_waiters,
            rt.ports.persistence,
            rt.ports.clock,
            rt.ports.changes,
            run_id,
            key,
            offset=offset,
            poll_interval=poll_interval,
        )

    async def wait_for_run(
        self,
        run_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the kernel's clock, not the loop's)
        poll_interval: float = 1.0,
    ) -> RunRecord:
        """Wait until the run is COMPLETED, FAILED or CANCELLED and return it.

        A transaction of this process that ends the run resolves the wait at once; a run
        that another process ends is found when the change feed hints at its commits, or
        by reading it every `poll_interval` seconds.
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
            rt.ports.changes,
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
