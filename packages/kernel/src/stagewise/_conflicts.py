"""Transactions the database aborted to resolve a conflict are tried again as a whole.

PostgreSQL breaks a deadlock by aborting one of the transactions in it (`40P01`), and a
serializable or repeatable-read snapshot that lost a race is aborted too (`40001`); the
adapter says so with `TransactionConflictError`. Nothing of the aborted transaction
committed, so the unit it carried can be decided again from what the database holds now:
the other transaction has its locks and goes on, and ours, run again at once, waits for
them instead of colliding (no backoff is needed: the database chose the survivor).

What is tried again is the whole unit, decisions included, never one statement: a command
whose work is all in its transactions is dispatched again (`Kernel.dispatch`); a step of
a group commit is tried again on its own (`_group`), which covers `job.execute`, whose user
code between its two transactions must not run twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from stagewise._errors import TransactionConflictError

T = TypeVar("T")

TRIES = 5
"""Tries of a unit before its conflict is raised to the caller."""

logger = logging.getLogger("stagewise.kernel")


async def retrying_conflicts(work: Callable[[], Awaitable[T]], what: str) -> T:
    """`work()`, tried again (up to `TRIES` in all) while the database aborts it for a
    conflict."""
    for tried in range(1, TRIES + 1):
        try:
            return await work()
        except TransactionConflictError as exc:
            if tried == TRIES:
                raise
            logger.info("%s: %s; trying it again (%d of %d)", what, exc, tried + 1, TRIES)
            await asyncio.sleep(0)  # let the survivor's commit be seen
    raise AssertionError("unreachable")
