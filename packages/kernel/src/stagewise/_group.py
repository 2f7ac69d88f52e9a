"""Group commit: concurrent steps of one command share one transaction.

Theory of operation
-------------------
A worker with many slots finishes (and starts) attempts of many runs at nearly the same
moment. Each in its own transaction costs a BEGIN, a lock, a read, a write per table and a
COMMIT; the database and the driver's per-statement overhead, not the work, set the pace.

`GroupCommit.run(command, run_id, step)` queues a *step*: a function of (unit, run) that
decides one attempt's work on its locked run (the aggregate, `_run.Run`) and returns its
answer. While no transaction of
that command is open, the queue is flushed at once, so a lone step waits for nothing. While
one is open, steps queue up and the next flush takes them all (up to
`KernelSettings.group_commit`): one transaction locks every run they touch in id order and
reads them with their stages (one statement), applies the steps one after another (steps of
the same run share its aggregate, in queue order), and writes what they all changed as one
changeset. Each caller gets its own step's answer once the transaction committed.

A step must not raise for an outcome it expects (a stale delivery, a cancelled run): it
returns it, and the caller raises after commit. When a step raises anyway, or the grouped
transaction fails, nothing of it committed; each step of the group is then tried again in a
transaction of its own, so one bad step costs the others a retry, not their answer.

A caller cancelled while its step is queued drops the step. Once its transaction has begun,
the step commits or not with the group, and the answer is dropped: the work it recorded
stands, as after a crash at that point (a stage it started for this worker is retried when
its lease expires).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from stagewise._conflicts import retrying_conflicts
from stagewise._run import Run
from stagewise._unit import UnitOfWork

T = TypeVar("T")
Step = Callable[[UnitOfWork, Run | None], Awaitable[T]]
OpenUnit = Callable[[str], AbstractAsyncContextManager[UnitOfWork]]

logger = logging.getLogger("stagewise.kernel")


@dataclass(slots=True)
class _Member:
    run_id: str | None
    step: Step[Any]
    future: asyncio.Future[Any]


class GroupCommit:
    """Queues and flushes steps; one flusher task per command while there is work."""

    def __init__(self, open_unit: OpenUnit, limit: int) -> None:
        self._open_unit = open_unit
        self._limit = limit
        self._queues: dict[str, list[_Member]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}

    async def run(self, command: str, run_id: str | None, step: Step[T]) -> T:
        """Run `step` on the locked run `run_id` (None when the run does not exist, or
        `run_id` is None: a step that locks no run) in a transaction of `command`, grouped
        with concurrent steps of the same command; return its answer once committed."""
        if self._limit == 1:
            return await self._alone(command, run_id, step)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(command, []).append(_Member(run_id, step, future))
        if command not in self._flushers:
            self._flushers[command] = asyncio.create_task(
                self._flush(command), name=f"stagewise-group-{command}"
            )
        return await future

    async def _flush(self, command: str) -> None:
        queue = self._queues[command]
        limit = self._limit
        try:
            while queue:
                batch = [m for m in queue[:limit] if not m.future.done()]
                del queue[:limit]
                if len(batch) == 1:
                    await self._settle(command, batch[0])
                elif batch:
                    await self._together(command, batch)
        except BaseException as exc:  # cancelled (shutdown), or a simulated crash
            for member in queue:
                _fail(member, exc)
            queue.clear()
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            del self._flushers[command]

    async def _together(self, command: str, batch: list[_Member]) -> None:
        answers: list[Any] = []
        try:
            async with self._open_unit(command) as unit:
                await unit.lock([m.run_id for m in batch if m.run_id is not None])
                for member in batch:
                    run = None if member.run_id is None else unit.runs.get(member.run_id)
                    answers.append(await member.step(unit, run))
        except Exception as exc:
            logger.debug("a group of %d failed (%s); each goes alone", len(batch), exc)
            for member in batch:
                await self._settle(command, member)
            return
        except BaseException as exc:
            for member in batch:
                _fail(member, exc)
            raise
        for member, answer in zip(batch, answers, strict=True):
            if not member.future.done():
                member.future.set_result(answer)

    async def _settle(self, command: str, member: _Member) -> None:
        try:
            answer = await self._alone(command, member.run_id, member.step)
        except Exception as exc:
            _fail(member, exc)
        except BaseException as exc:
            _fail(member, exc)
            raise
        else:
            if not member.future.done():
                member.future.set_result(answer)

    async def _alone(self, command: str, run_id: str | None, step: Step[T]) -> T:
        async def once() -> T:
            async with self._open_unit(command) as unit:
                run = None if run_id is None else await unit.run(run_id)
                answer = await step(unit, run)
            return answer

        return await retrying_conflicts(once, command)


def _fail(member: _Member, exc: BaseException) -> None:
    if member.future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        member.future.cancel()
    else:
        member.future.set_exception(exc)
