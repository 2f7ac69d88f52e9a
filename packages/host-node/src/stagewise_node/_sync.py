"""`Engine` for code without an event loop of its own: scripts, notebooks, a Django view.

    with SyncEngine("sqlite:///app.db", [checkout]) as engine:
        print(engine.run("checkout", {"order_id": "o-1", "amount": 10}))

The engine lives on an event loop of its own, in a thread of its own, for as long as it is
open, so its host keeps serving (heartbeats, claims, the outbox) between calls, and a
notebook whose own loop is already running can use it too. Each method hands its coroutine
to that loop and blocks until it is done.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar, Unpack

from stagewise import Kernel, LogPage, RunFilter, RunPage, RunRecord, StreamItemRecord
from stagewise_node._engine import Engine, EngineOptions, Workflows

T = TypeVar("T")


class SyncEngine:
    """`Engine`, with every method blocking: open it with `with SyncEngine(...) as engine`
    (or `open()` / `close()`). It takes `Engine`'s arguments and raises what `Engine` does;
    an interrupted call (Ctrl-C) cancels what it was waiting for."""

    def __init__(self, url: str, workflows: Workflows, **options: Unpack[EngineOptions]) -> None:
        self.engine = Engine(url, workflows, **options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Start the engine's loop thread, then open the engine on it.

        Raises:
            RuntimeError: the engine is open already.
            StagewiseError: as `Engine.open` (the thread is stopped again).
        """
        if self._loop is not None:
            raise RuntimeError("the engine is open already")
        loop = asyncio.new_event_loop()
        # A daemon thread: a script that forgets close() still exits (its in-flight stages
        # are then retried by another worker when their leases expire, as after a crash).
        thread = threading.Thread(target=_serve, args=(loop,), name="stagewise-engine", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._call(self.engine.open())
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        """Close the engine (drain, flush, close the database), then stop its thread. Safe
        to call twice."""
        if self._loop is None:
            return
        try:
            self._call(self.engine.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncEngine:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def kernel(self) -> Kernel:
        """The kernel; its coroutines must run on the engine's loop (`SyncEngine.call`)."""
        return self.engine.kernel

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the engine's loop and return its result (for what the methods
        below do not cover: `engine.call(engine.kernel.dispatch(...))`).

        Raises:
            RuntimeError: the engine is not open.
        """
        return self._call(coroutine)

    # --- runs: as Engine's ----------------------------------------------------------------

    def start(
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
        """`Engine.start`: create a run; its id."""
        return self._call(
            self.engine.start(
                workflow_id,
                input,
                idempotency_key=idempotency_key,
                config=config,
                priority=priority,
                metadata=metadata,
                deadline=deadline,
            )
        )

    def wait(self, run_id: str, *, timeout: float | None = None) -> RunRecord:
        """`Engine.wait`: the run's record once it has ended."""
        return self._call(self.engine.wait(run_id, timeout=timeout))

    def result(self, run_id: str, *, timeout: float | None = None) -> Any:
        """`Engine.result`: the run's output once it has completed."""
        return self._call(self.engine.result(run_id, timeout=timeout))

    def run(
        self,
        workflow_id: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """`Engine.run`: start a run and return its output once it has completed."""
        return self._call(
            self.engine.run(workflow_id, input, idempotency_key=idempotency_key, timeout=timeout)
        )

    def signal(
        self, run_id: str, topic: str, payload: Any = None, *, idempotency_key: str | None = None
    ) -> str | None:
        """`Engine.signal`: send a signal to the run; the stage that took it, or None."""
        return self._call(
            self.engine.signal(run_id, topic, payload, idempotency_key=idempotency_key)
        )

    def get_event(self, run_id: str, key: str, *, timeout: float | None = 0) -> Any:
        """`Engine.get_event`: the run's latest value under `key`, waiting up to `timeout`."""
        return self._call(self.engine.get_event(run_id, key, timeout=timeout))

    def read_stream(self, run_id: str, key: str, *, offset: int = 0) -> Iterator[StreamItemRecord]:
        """`Engine.read_stream`: the run's stream `key`, item by item as it is written,
        until it is closed or the run ends (each item waited for on the engine's loop)."""
        stream = self.engine.read_stream(run_id, key, offset=offset)

        async def following() -> StreamItemRecord | None:
            return await anext(stream, None)

        try:
            while (item := self._call(following())) is not None:
                yield item
        finally:
            if self._loop is not None:
                self._call(stream.aclose())

    def get(self, run_id: str) -> RunRecord | None:
        """`Engine.get`: the run as stored now."""
        return self._call(self.engine.get(run_id))

    def list_runs(
        self, where: RunFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> RunPage:
        """`Engine.list_runs`: runs newest first, a page at a time."""
        return self._call(self.engine.list_runs(where, limit=limit, cursor=cursor))

    def logs(self, run_id: str, *, after: int = 0, stage_id: str | None = None) -> LogPage:
        """`Engine.logs`: the run's log lines after line `after`."""
        return self._call(self.engine.logs(run_id, after=after, stage_id=stage_id))

    def cancel(self, run_id: str, reason: str | None = None) -> bool:
        """`Engine.cancel`: False when the run had ended already."""
        return self._call(self.engine.cancel(run_id, reason))

    def rerun(self, run_id: str, from_stage: str) -> list[str]:
        """`Engine.rerun`: the ids of the stages reset."""
        return self._call(self.engine.rerun(run_id, from_stage))

    # --- the loop ------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coroutine.close()
            raise RuntimeError("the engine is not open: use `with SyncEngine(...)`")
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C while blocked here (or any error): nothing must go on in the loop on
            # behalf of a call that has returned; a finished future ignores the cancel.
            future.cancel()
            raise

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The engine's thread: its loop until `_stop_loop` stops it, then the loop's own
    cleanup, here (the caller's thread may have a loop of its own running)."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
