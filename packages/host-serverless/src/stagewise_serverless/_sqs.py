"""A `JobTransport` that feeds an SQS queue (or anything with SQS's batch-send shape).

The kernel feeds a transport outside its database only after commit, so the queue never
sees a job whose transaction rolled back; a send that fails is logged by the kernel and
repeated by maintenance (`lease.reapStale` enqueues again a due stage whose job did not
start within `KernelSettings.requeue_after`). Delivery is the platform's: Lambda's SQS
event source takes messages and hands them to `LambdaAdapter`, and deletes every record
the handler does not report as failed. So this transport only sends; acknowledging,
re-timing and leasing are the queue's own business, and a redelivered message is made
harmless by the kernel's fence.

No AWS library is imported: the application passes the function that sends, e.g.

    sqs = boto3.client("sqs")
    async def send(entries):
        return await asyncio.to_thread(sqs.send_message_batch, QueueUrl=URL, Entries=entries)
    transport = SqsJobTransport(send)
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from stagewise import Clock, JobMessage, SystemClock, Transaction, TransientError
from stagewise_serverless._messages import encode_job_message

SendBatch = Callable[[list[dict[str, Any]]], Awaitable[Mapping[str, Any] | None]]
"""Sends up to 10 `SendMessageBatch` entries (`Id`, `MessageBody`, `DelaySeconds`);
returns the API's response (its `Failed` list is checked) or None."""

MAX_BATCH = 10
"""Entries in one SQS `SendMessageBatch` call."""
MAX_DELAY_SECONDS = 900
"""SQS's longest per-message delay (15 minutes)."""


class SqsJobTransport:
    """Sends job messages to a standard SQS queue; delivery is the platform's.

    A job due later than now is sent with `DelaySeconds` (at most 15 minutes, SQS's limit).
    A job due later still arrives early; the kernel sees that it is not due, and
    `LambdaAdapter` reports the record as failed so that SQS delivers it again after the
    queue's visibility timeout — until it is due.
    """

    def __init__(self, send_batch: SendBatch, *, clock: Clock | None = None) -> None:
        self._send = send_batch
        self._clock: Clock = clock or SystemClock()

    def joins(self, tx: Transaction) -> bool:
        return False

    async def enqueue(self, jobs: Sequence[JobMessage], *, tx: Transaction | None = None) -> None:
        """Send the jobs, 10 to a call.

        Raises:
            TransientError: the queue refused some of them (the kernel logs it, and
                maintenance sends them again later).
        """
        now = self._clock.now()
        for start in range(0, len(jobs), MAX_BATCH):
            chunk = jobs[start : start + MAX_BATCH]
            entries = [
                {
                    "Id": str(i),
                    "MessageBody": encode_job_message(job),
                    "DelaySeconds": _delay(job.available_at, now),
                }
                for i, job in enumerate(chunk)
            ]
            response = await self._send(entries)
            failed = list((response or {}).get("Failed") or [])
            if failed:
                by_entry = {str(i): job.job_id for i, job in enumerate(chunk)}
                ids = [by_entry.get(str(f.get("Id")), "?") for f in failed]
                reasons = sorted({str(f.get("Code") or f.get("Message") or "?") for f in failed})
                raise TransientError(
                    f"the queue refused {len(failed)} job message(s) {ids}: {', '.join(reasons)}"
                )

    async def dequeue(
        self,
        *,
        worker_id: str,
        limit: int,
        lease_for: float,
        workflows: Sequence[tuple[str, str]] | None = None,
    ) -> list[JobMessage]:
        """Nothing: SQS pushes its messages to the function (see `LambdaAdapter`)."""
        return []

    async def ack(self, job_ids: Sequence[str], *, tx: Transaction | None = None) -> None:
        """Nothing: Lambda deletes every record its handler does not report as failed."""

    async def retry_at(self, job_id: str, at: datetime) -> None:
        """Nothing: SQS cannot re-time a message by job id. The host marks the delivery
        `redeliver`, and the visibility timeout brings it back."""

    async def extend_lease(self, job_id: str, *, lease_for: float) -> bool:
        """The stage row holds the lease that counts; a redelivery while the job still
        runs is refused by the kernel's fence. Always True."""
        return True

    async def release_expired(self, *, worker_id: str | None = None) -> int:
        """Nothing to release: SQS makes unacknowledged messages visible again itself."""
        return 0

    async def discard_run(self, run_id: str, *, tx: Transaction | None = None) -> int:
        """Nothing: messages of a cancelled run are dropped when delivered (`cancelled`)."""
        return 0


def _delay(available_at: datetime, now: datetime) -> int:
    seconds = (available_at - now).total_seconds()
    return min(MAX_DELAY_SECONDS, max(0, math.ceil(seconds)))
