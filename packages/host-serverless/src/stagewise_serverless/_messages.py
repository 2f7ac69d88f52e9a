"""The job message as a queue carries it: JSON in, a kernel `JobMessage` out.

The body is what `JobMessage.to_json()` writes. Parsing is strict about what the kernel
needs (ids and attempt) and lenient about the rest: unknown keys are ignored, so a newer
producer can add fields without breaking an older consumer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from stagewise import InvalidInputError, JobMessage

_IDS = ("job_id", "run_id", "workflow_id", "stage_id")
_MAX_ID = 200


class MalformedJobMessageError(InvalidInputError):
    """A queue message that is not a stagewise job message; no retry can change that."""


def parse_job_message(
    message: object,
    *,
    received_at: datetime | None = None,
) -> JobMessage:
    """Read a job message from a queue body (JSON text or bytes), a decoded dict, or pass a
    `JobMessage` through. Anything else is malformed.

    `available_at` and `priority` may be left out (a hand-written message); `available_at`
    then defaults to `received_at`. The kernel fences on the stage row, not on these.

    Raises:
        MalformedJobMessageError: the body is not JSON, not an object, or misses or mistypes
            a field the kernel needs.
    """
    if isinstance(message, JobMessage):
        return message
    data: Any = message
    if isinstance(message, (str, bytes, bytearray)):
        try:
            data = json.loads(message)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedJobMessageError(f"job message is not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise MalformedJobMessageError(
            f"job message must be a JSON object, not {type(data).__name__}"
        )
    problems: list[str] = []
    ids: dict[str, str] = {}
    for key in _IDS:
        value = data.get(key)
        if not isinstance(value, str) or not value or len(value) > _MAX_ID:
            problems.append(f"{key} must be a non-empty string of at most {_MAX_ID} characters")
        else:
            ids[key] = value
    attempt = data.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        problems.append("attempt must be a positive integer")
    priority = data.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        problems.append("priority must be an integer")
    available_at = _timestamp(data.get("available_at", received_at), problems)
    if problems:
        raise MalformedJobMessageError("malformed job message: " + "; ".join(problems))
    assert isinstance(attempt, int)
    assert available_at is not None
    return JobMessage(
        job_id=ids["job_id"],
        run_id=ids["run_id"],
        workflow_id=ids["workflow_id"],
        stage_id=ids["stage_id"],
        attempt=attempt,
        available_at=available_at,
        priority=priority,
    )


def _timestamp(value: Any, problems: list[str]) -> datetime | None:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    if not isinstance(value, str):
        problems.append("available_at must be an ISO 8601 timestamp with a timezone")
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        problems.append(f"available_at {value[:40]!r} is not an ISO 8601 timestamp")
        return None
    if parsed.tzinfo is None:
        problems.append("available_at must carry a timezone")
        return None
    return parsed


def encode_job_message(job: JobMessage) -> str:
    """The queue body for `job`: compact JSON of `JobMessage.to_json()`."""
    return json.dumps(job.to_json(), separators=(",", ":"))
