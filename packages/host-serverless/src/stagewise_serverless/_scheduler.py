"""The `Scheduler` a serverless deployment needs: none that runs."""

from __future__ import annotations

from datetime import datetime


class TickScheduler:
    """A `Scheduler` that drops every hint: with no process to wake, the scheduled
    maintenance tick finds the work, so its period bounds how late a poll, a reap or an
    outbox flush can be. (Job hints need nothing: the job itself is on the queue, delayed
    until it is due.)"""

    async def wake(self, command: str, at: datetime) -> None:
        return None
