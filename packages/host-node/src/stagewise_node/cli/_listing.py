"""`stagewise runs list`: filters, pages, and the command line of the next page.

Times are taken as a duration back from now (`30m`, `2h`, `7d`, `1h30m`) or a point in
time (`2026-12-03T09:00`, local unless it says its offset, or UTC with `--utc`). "Now" is
the kernel's clock, the one runs' times are written on (on the SQL backends, the
database's), so `--since 5m` means the last five minutes of the database's time even on a
machine whose clock is off. The command suggested for the next page carries the times as
the points they were read as, not as durations: run a minute later, `--since 2h` would
mean another range, and the page after would not follow this one.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.text import Text

from stagewise import RunFilter, RunPage, RunRecord
from stagewise_node.cli._compose import DATABASE_ENV, DEFAULT_DATABASE, client
from stagewise_node.cli._invocation import stagewise_command
from stagewise_node.cli._output import CliError, console
from stagewise_node.cli._render import Times, runs_table
from stagewise_node.cli._text import json_text, safe_text
from stagewise_sql._connect import display_url

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_when(text: str, *, now: datetime, utc: bool, option: str) -> datetime:
    """`text` as a point in time: `now` minus a duration (`90s`, `30m`, `2h`, `7d`, `1w`,
    `1h30m`), or an ISO datetime (local when it has no offset; UTC with `utc`).

    Raises:
        CliError: neither.
    """
    value = text.strip()
    if _DURATION.fullmatch(value):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))
        return now - timedelta(seconds=seconds)
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise CliError(
            f"{option} {text!r} is neither a duration (30m, 2h, 7d) nor a date and time "
            "(2026-12-03T09:00, 2026-12-03T09:00+01:00)"
        ) from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC) if utc else at.astimezone()
    return at


def parse_meta(pairs: Sequence[str]) -> dict[str, str]:
    """`--meta key=value` options as a dict (a key given twice: the last value).

    Raises:
        CliError: an option without `=`.
    """
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--meta takes KEY=VALUE, not {pair!r}")
        metadata[key] = value
    return metadata


@dataclass(frozen=True)
class Listing:
    """What `stagewise runs list` was asked for: the filters, with the time options as
    typed (they are read against the kernel's clock once the database is open)."""

    where: RunFilter = field(default_factory=RunFilter)
    since: str | None = None
    until: str | None = None
    finished_since: str | None = None
    finished_until: str | None = None
    limit: int = 50
    cursor: str | None = None


_TIMES = (
    ("since", "--since"),
    ("until", "--until"),
    ("finished_since", "--finished-since"),
    ("finished_until", "--finished-until"),
)


def _times(listing: Listing, now: datetime, utc: bool) -> dict[str, datetime | None]:
    """Each time option read as a point in time (None where not given)."""
    read: dict[str, datetime | None] = {}
    for name, option in _TIMES:
        text = getattr(listing, name)
        read[name] = None if text is None else parse_when(text, now=now, utc=utc, option=option)
    return read


async def list_runs(*, db: str, listing: Listing, as_json: bool, times: Times) -> None:
    async with client(db, None, migrate=False) as c:
        at = _times(listing, c.kernel.clock.now(), times.utc)
        where = replace(
            listing.where,
            created_after=at["since"],
            created_before=at["until"],
            finished_after=at["finished_since"],
            finished_before=at["finished_until"],
        )
        page = await c.kernel.list_runs(where, limit=listing.limit, cursor=listing.cursor)
    if as_json:  # escaped JSON (the same values), not Rich's, which passes C1 controls
        console.print(Text(json_text(_page_json(page))), soft_wrap=True)
        return
    console.print(runs_table(page.runs, times))
    if page.next_cursor is not None:
        command = next_page_command(db, listing, at, page.next_cursor, utc=times.utc)
        console.print(Text.assemble(("more: ", "bold"), safe_text(command)), soft_wrap=True)


def next_page_command(
    db: str, listing: Listing, at: dict[str, datetime | None], cursor: str, *, utc: bool
) -> str:
    """The command line of the page after this one: the same filters, the times as the
    points they were read as (see the module's comment), and the cursor."""
    words = ["runs", "list"]
    where = listing.where
    options: list[tuple[str, str | None]] = [
        ("--status", where.run_status.value if where.run_status else None),
        ("--workflow", where.workflow_id),
        ("--version", where.workflow_version),
    ]
    options += [(option, _iso(at[name])) for name, option in _TIMES]
    options += [("--meta", f"{k}={v}") for k, v in where.metadata.items()]
    options += [("--limit", str(listing.limit)), ("--cursor", cursor)]
    if db not in (DEFAULT_DATABASE, os.environ.get(DATABASE_ENV)):
        options.append(("--db", display_url(db)))  # never a password, even to copy
    for option, value in options:
        if value is not None:
            words += [option, value]
    if utc:
        words.append("--utc")
    return f"{stagewise_command()} {shlex.join(words)}"


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _page_json(page: RunPage) -> dict[str, Any]:
    return {"runs": [run_json(r) for r in page.runs], "next_cursor": page.next_cursor}


def run_json(run: RunRecord) -> dict[str, Any]:
    """A run's row as `--json` shows it (times in ISO 8601, UTC)."""
    return {
        "run_id": run.run_id,
        "workflow_id": run.workflow_id,
        "workflow_version": run.workflow_version,
        "status": run.status.value,
        "metadata": run.metadata,
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error.to_json() if run.error else None,
    }
