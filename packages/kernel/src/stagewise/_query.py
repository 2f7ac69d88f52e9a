"""What reading runs and logs takes and gives: `RunFilter`, `RunPage`, `LogPage`, and the
cursor of a listing of runs.

Theory of operation
-------------------
A listing is newest first by `(created_at, run_id)`: the creation time orders what a user
means by "newest", and the id breaks ties between runs created in the same microsecond, so
the order is total and the same on every backend (ids sort byte-wise everywhere). A page's
cursor is the key of its last run, and the next page is the runs whose key sorts below it
(keyset paging). A run created between two pages sorts above every key already handed out,
so it shows on no later page, and none of the runs that were there moves: walking the pages
lists each of them exactly once. Offsets would repeat a run for every insert in between.
(A run created with a clock behind the others' could sort below a cursor already handed
out and be missed by that walk; every writer's clock is the database's, measured, so that
takes a skew larger than the time between two pages.)

The cursor is opaque to callers (`r1.` and the key as base64 of JSON): they pass back what a
page gave. A cursor that does not decode is refused with `InvalidCursorError`, never read as
a different position.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from stagewise._errors import InvalidCursorError, InvalidInputError
from stagewise._records import LogLine, RunRecord
from stagewise._states import RunStatus

MAX_PAGE = 10_000
"""The most runs or log lines one read returns."""

METADATA_KEY = r"^[A-Za-z0-9_.:/-]{1,64}$"
"""What a metadata key may be (letters, digits, `_.:/-`): nothing in it needs quoting in a
JSON path (SQLite's match) or on a command line."""
_KEY = re.compile(METADATA_KEY)


@dataclass(frozen=True)
class RunFilter:
    """Which runs a listing holds: those that pass every field given (None: any).

    Times are half-open ranges, `after <= t < before`, so adjacent ranges share no run; a
    run that has not finished passes no `finished_*` bound. `metadata`: every key present
    on the run with exactly that value. `status` is a `RunStatus` or its name in any case.

    Raises:
        InvalidInputError: an unknown status, a time without a timezone, or a metadata
            key no run can have (see `METADATA_KEY`).
    """

    status: RunStatus | str | None = None
    workflow_id: str | None = None
    workflow_version: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    finished_after: datetime | None = None
    finished_before: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", parse_status(self.status))
        object.__setattr__(self, "metadata", dict(self.metadata))
        for key, value in self.metadata.items():
            if not isinstance(key, str) or not _KEY.match(key) or not isinstance(value, str):
                raise InvalidInputError(f"not a metadata key and text value: {key!r}={value!r}")
        for name in ("created_after", "created_before", "finished_after", "finished_before"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise InvalidInputError(f"{name} has no timezone: {value.isoformat()}")

    @property
    def run_status(self) -> RunStatus | None:
        """`status` as the `RunStatus` it was read as."""
        return self.status if isinstance(self.status, RunStatus) else None

    def matches(self, run: RunRecord) -> bool:
        """Whether `run` passes (the in-memory reference of what adapters select)."""
        return (
            (self.status is None or run.status is self.status)
            and (self.workflow_id is None or run.workflow_id == self.workflow_id)
            and (self.workflow_version is None or run.workflow_version == self.workflow_version)
            and _within(run.created_at, self.created_after, self.created_before)
            and _finished_within(run.finished_at, self.finished_after, self.finished_before)
            and all(run.metadata.get(k) == v for k, v in self.metadata.items())
        )


def _within(at: datetime, after: datetime | None, before: datetime | None) -> bool:
    return (after is None or at >= after) and (before is None or at < before)


def _finished_within(at: datetime | None, after: datetime | None, before: datetime | None) -> bool:
    if after is None and before is None:
        return True
    return at is not None and _within(at, after, before)


def parse_status(value: RunStatus | str | None) -> RunStatus | None:
    """`value` as a `RunStatus` (a name in any case).

    Raises:
        InvalidInputError: no such status.
    """
    if value is None or isinstance(value, RunStatus):
        return value
    try:
        return RunStatus(str(value).upper())
    except ValueError:
        names = ", ".join(s.value for s in RunStatus)
        raise InvalidInputError(f"unknown run status {value!r} (one of {names})") from None


def check_limit(limit: int) -> int:
    """Raises `InvalidInputError` unless 1 <= limit <= MAX_PAGE."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be from 1 to {MAX_PAGE}, not {limit}")
    return limit


# --- pages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of a listing of runs, newest first."""

    runs: list[RunRecord]
    next_cursor: str | None
    """Pass it as `cursor` for the next page; None when this page is the last."""


@dataclass(frozen=True, slots=True)
class LogPage:
    """The lines of a run's log after a point, in the order they were written."""

    lines: list[LogLine]
    next_after: int
    """Pass it as `after` to get the lines after these: the last line's id, or the `after`
    asked with when there were none."""
    more: bool
    """More lines were there than `limit` let through: ask again at once."""
    status: RunStatus
    """The run's status, read before the lines. A run's last lines are committed with its
    end at the latest, so once this is terminal, this page and the ones after it (while
    `more`) hold every line the run will ever have: a follower can stop there."""


_CURSOR_PREFIX = "r1."


def encode_cursor(run: RunRecord) -> str:
    """The cursor of the page after `run` (see the module's comment)."""
    key = json.dumps([run.created_at.isoformat(), run.run_id], separators=(",", ":"))
    return _CURSOR_PREFIX + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, run_id) a cursor made by `encode_cursor` holds.

    Raises:
        InvalidCursorError: anything else.
    """
    body = cursor.removeprefix(_CURSOR_PREFIX)
    if body == cursor or not body:
        raise InvalidCursorError(cursor)
    try:
        key = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        created, run_id = key
        at = datetime.fromisoformat(created)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidCursorError(cursor) from None
    if not isinstance(run_id, str) or not run_id or at.utcoffset() is None:
        raise InvalidCursorError(cursor)
    return at, run_id
