"""A job message: one delivery of one stage attempt, and the JSON body a queue carries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Json = Any


@dataclass(frozen=True, slots=True)
class JobMessage:
    """One delivery of one stage attempt.

    Deliveries may be lost or duplicated; the stage row is the truth, and `job.execute`
    fences every delivery against it. This is also the JSON body an external queue carries
    (see `to_json` / `from_json`).
    """

    job_id: str
    run_id: str
    workflow_id: str
    stage_id: str
    attempt: int
    available_at: datetime
    priority: int = 0
    lease_expires_at: datetime | None = None
    """Set by the transport on dequeue: the delivery's visibility lease."""
    workflow_version: str | None = None
    """The run's workflow version: a worker that lacks it leaves the job to one that has it."""

    def to_json(self) -> dict[str, Json]:
        return {
            "job_id": self.job_id,
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "workflow_version": self.workflow_version,
            "stage_id": self.stage_id,
            "attempt": self.attempt,
            "available_at": self.available_at.isoformat(),
            "priority": self.priority,
        }

    @classmethod
    def from_json(cls, data: dict[str, Json]) -> JobMessage:
        """Parse a message body made by `to_json`.

        Raises:
            InvalidInputError: a missing or malformed field (named in the message).
        """
        from stagewise._errors import InvalidInputError

        try:
            available = data.get("available_at")
            return cls(
                job_id=_text(data, "job_id"),
                run_id=_text(data, "run_id"),
                workflow_id=_text(data, "workflow_id"),
                stage_id=_text(data, "stage_id"),
                attempt=int(data["attempt"]),
                available_at=(
                    datetime.fromisoformat(available)
                    if isinstance(available, str)
                    else datetime.fromtimestamp(0, UTC)
                ),
                priority=int(data.get("priority") or 0),
                workflow_version=_optional_text(data, "workflow_version"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInputError(f"not a stagewise job message: {exc!r}") from None


def _text(data: dict[str, Json], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def _optional_text(data: dict[str, Json], name: str) -> str | None:
    return None if data.get(name) is None else _text(data, name)
