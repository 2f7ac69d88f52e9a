"""Recorded AWS shapes for the Lambda tests: a scheduled event, SQS records, a fake SQS
queue that behaves like Lambda's event source, and a Lambda context on the fake clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from stagewise.testing import FakeClock

SCHEDULED_EVENT: dict[str, Any] = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-01-01T00:00:00Z",
    "region": "eu-west-1",
    "resources": ["arn:aws:events:eu-west-1:123456789012:rule/stagewise-maintenance"],
    "detail": {},
}


# --- SQS and the Lambda context -------------------------------------------------


@dataclass
class _Message:
    message_id: str
    body: str
    visible_at: datetime
    receives: int = 0
    receipt: str | None = None


class FakeSqs:
    """A standard queue as Lambda's SQS event source sees it: delayed sends, a visibility
    timeout, batches of records, and the partial-batch settle (records not reported as
    failed are deleted; failed ones come back when their visibility timeout ends)."""

    def __init__(self, clock: FakeClock, *, visibility_timeout: float = 60.0) -> None:
        self._clock = clock
        self._visibility = timedelta(seconds=visibility_timeout)
        self._messages: dict[str, _Message] = {}
        self._ids = itertools.count(1)
        self.refuse: Callable[[dict[str, Any]], bool] | None = None
        self.sent: list[dict[str, Any]] = []

    async def send_message_batch(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        assert 1 <= len(entries) <= 10
        ok, failed = [], []
        for entry in entries:
            if self.refuse is not None and self.refuse(entry):
                failed.append({"Id": entry["Id"], "Code": "InternalError", "SenderFault": False})
                continue
            message_id = f"msg-{next(self._ids):04d}"
            delay = timedelta(seconds=entry.get("DelaySeconds", 0))
            self._messages[message_id] = _Message(
                message_id, entry["MessageBody"], self._clock.now() + delay
            )
            self.sent.append(entry)
            ok.append({"Id": entry["Id"], "MessageId": message_id})
        return {"Successful": ok, "Failed": failed}

    def receive(self, max_records: int = 10) -> dict[str, Any]:
        """An SQS event as Lambda delivers it, with up to `max_records` visible messages."""
        now = self._clock.now()
        visible = [m for m in self._messages.values() if m.visible_at <= now][:max_records]
        records = []
        for m in visible:
            m.receives += 1
            m.receipt = f"{m.message_id}-r{m.receives}"
            m.visible_at = now + self._visibility
            records.append(sqs_record(m.message_id, m.body, receipt=m.receipt, receives=m.receives))
        return {"Records": records}

    def settle(self, event: Mapping[str, Any], response: Mapping[str, Any]) -> None:
        """What the event source does with the handler's partial batch response."""
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        for record in event["Records"]:
            if record["messageId"] not in failed:
                self._messages.pop(record["messageId"], None)

    def bodies(self) -> list[str]:
        return [m.body for m in self._messages.values()]

    def __len__(self) -> int:
        return len(self._messages)


def sqs_record(
    message_id: str, body: Any, *, receipt: str = "AQEB-receipt", receives: int = 1
) -> dict[str, Any]:
    return {
        "messageId": message_id,
        "receiptHandle": receipt,
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receives),
            "SentTimestamp": "1767225600000",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1767225600001",
        },
        "messageAttributes": {},
        "md5OfBody": "0" * 32,
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:stagewise-jobs",
        "awsRegion": "eu-west-1",
    }


class FakeContext:
    """A Lambda context whose remaining time runs on the fake clock."""

    def __init__(self, clock: FakeClock, remaining_ms: int = 60_000) -> None:
        self._clock = clock
        self._deadline = clock.now() + timedelta(milliseconds=remaining_ms)
        self.aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e812345678"
        self.function_name = "stagewise-jobs"

    def get_remaining_time_in_millis(self) -> int:
        left = (self._deadline - self._clock.now()).total_seconds()
        return max(0, int(left * 1000))
