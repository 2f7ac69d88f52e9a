"""Rich tables for runs, stages and attempts.

Every text that came from users or the database (ids, inputs, outputs, errors, notes) goes
in as `safe_text` (escaped, no markup read). Times are local with their UTC offset, or UTC
with `--utc` (`Times`); errors are shown whole, wrapped to the room there is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from stagewise import ErrorInfo, RunRecord, RunValueRecord, StageRecord, StageStatus
from stagewise_node.cli._text import printable, safe_text
from stagewise_node.cli._views import RunView

STATUS_STYLE = {
    "PENDING": "dim",
    "RUNNING": "bold yellow",
    "SUSPENDED": "magenta",
    "RETRYING": "bold red",
    "COMPLETED": "bold green",
    "FAILED": "bold red",
    "CANCELLED": "red",
    "SKIPPED": "dim",
}
OUTCOME_STYLE = {
    "completed": "green",
    "retried": "red",
    "failed": "bold red",
    "suspended": "magenta",
    "running": "yellow",
    "cancelled": "red",
    "abandoned": "red",
    "released": "yellow",
}
ERROR_LIMIT = 4000
"""Longer error messages are cut (tracebacks are shown whole, under the tables)."""


@dataclass(frozen=True)
class Column:
    """A column of times: its title and its cells."""

    title: str
    cells: list[str]


@dataclass(frozen=True)
class Times:
    """How times are shown: in the local zone with its UTC offset, or in UTC (`--utc`)."""

    utc: bool = False

    def _at(self, at: datetime) -> datetime:
        return at.astimezone(UTC) if self.utc else at.astimezone()

    def zone(self, at: datetime) -> str:
        """`UTC`, or the offset of the local zone at `at` (`+01:00`)."""
        if self.utc:
            return "UTC"
        offset = self._at(at).utcoffset() or timedelta(0)
        sign, minutes = ("-", -offset) if offset < timedelta(0) else ("+", offset)
        hours, rest = divmod(int(minutes.total_seconds()) // 60, 60)
        return f"{sign}{hours:02d}:{rest:02d}"

    def _clock(self, at: datetime, fmt: str) -> str:
        text = self._at(at).strftime(fmt)
        return text[:-3] if fmt.endswith("%f") else text  # milliseconds

    def full(self, at: datetime | None) -> str:
        """`2026-12-03 07:08:09.123 +01:00`."""
        if at is None:
            return "-"
        return f"{self._clock(at, '%Y-%m-%d %H:%M:%S.%f')} {self.zone(at)}"

    def column(self, title: str, times: Sequence[datetime | None], fmt: str) -> Column:
        """Times as `fmt`: their zone in the title when they share one (as they do unless
        a clock change falls among them), else in each cell."""
        zones = {self.zone(t) for t in times if t is not None}
        shared = next(iter(zones)) if len(zones) == 1 else None
        cells = []
        for t in times:
            if t is None:
                cells.append("-")
            else:
                cells.append(self._clock(t, fmt) + ("" if shared else f" {self.zone(t)}"))
        return Column(f"{title} ({shared})" if shared else title, cells)


def status(value: str) -> Text:
    return Text(value, style=STATUS_STYLE.get(value, ""))


def duration(start: datetime | None, end: datetime | None, now: datetime | None = None) -> str:
    if start is None:
        return "-"
    stop = end or now
    if stop is None:
        return "-"
    seconds = max(0.0, (stop - start).total_seconds())
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:04.1f}s"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short(value: Any, limit: int = 80) -> str:
    """`value` (text, or JSON for anything else) in at most `limit` characters, escaped."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return _cut(printable(text), limit)


def error_text(error: ErrorInfo | str, *, newlines: bool = False) -> str:
    """An error as `Type: message`, escaped, cut only past `ERROR_LIMIT`."""
    text = error if isinstance(error, str) else f"{error.type}: {error.message}"
    return _cut(printable(text, newlines=newlines), ERROR_LIMIT)


def runs_table(runs: Sequence[RunRecord], times: Times) -> Table:
    table = Table(title=f"{len(runs)} run(s)", title_justify="left")
    created = times.column("created", [r.created_at for r in runs], "%m-%d %H:%M:%S")
    table.add_column("run id", no_wrap=True, min_width=36)
    table.add_column("workflow", overflow="fold")
    table.add_column("version", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column(created.title, no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    labelled = any(run.metadata for run in runs)  # the column only when there is one
    if labelled:
        table.add_column("metadata", overflow="fold")
    table.add_column("error", overflow="fold", ratio=1)
    for run, when in zip(runs, created.cells, strict=True):
        cells: list[RenderableType] = [
            safe_text(run.run_id),
            safe_text(run.workflow_id),
            safe_text(run.workflow_version or "-"),
            status(run.status.value),
            when,
            duration(run.started_at, run.finished_at),
        ]
        if labelled:
            cells.append(safe_text(labels(run.metadata)))
        table.add_row(*cells, Text(error_text(run.error)) if run.error else "")
    return table


def labels(metadata: dict[str, str]) -> str:
    """`key=value key=value` (to be escaped where it is shown)."""
    return " ".join(f"{k}={v}" for k, v in sorted(metadata.items()))


def _started(stage: StageRecord) -> datetime | None:
    return None if stage.status is StageStatus.PENDING else stage.started_at


def stages_table(
    view: RunView, times: Times, *, now: datetime | None = None, title: str | None = None
) -> Table:
    table = Table(title=title, title_justify="left")
    started = times.column("started", [_started(s) for s in view.stages], "%H:%M:%S.%f")
    table.add_column("group", justify="right", no_wrap=True)
    table.add_column("stage", overflow="fold")
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column(started.title, no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("notes", overflow="fold", ratio=1)
    for stage, when in zip(view.stages, started.cells, strict=True):
        pending = stage.status is StageStatus.PENDING  # no attempt has started yet
        table.add_row(
            str(stage.group_index + 1),
            safe_text(stage.stage_id),
            status(stage.status.value),
            "-" if pending else str(stage.attempt),
            when,
            "-" if pending else duration(stage.started_at, stage.finished_at, now),
            notes(view, stage, times),
        )
    return table


def notes(view: RunView, stage: StageRecord, times: Times) -> Text:
    """What else there is to know about a stage, one note after another: `;`-separated."""
    parts: list[Text] = []
    if not stage.status.is_terminal and (stage.progress is not None or stage.progress_message):
        progress = "" if stage.progress is None else f"{stage.progress:.0f}%"
        message = printable(stage.progress_message or "")
        parts.append(Text(" ".join(p for p in (progress, message) if p)))
    retried = [a for a in view.attempts_of(stage.stage_id) if a.outcome in ("retried", "abandoned")]
    failed = stage.status is StageStatus.FAILED and stage.error is not None
    if retried:
        noun = "retry" if len(retried) == 1 else "retries"
        last = "" if failed else f", last: {error_text(retried[-1].error or '')}"
        parts.append(Text(f"{len(retried)} {noun}{last}", style="red"))
    if failed and stage.error is not None:
        parts.append(Text(error_text(stage.error), style="bold red"))
    if stage.status is StageStatus.SUSPENDED:
        parts.append(Text(waits_on(stage, times), style="magenta"))
    return Text("; ").join(parts)


def waits_on(stage: StageRecord, times: Times) -> str:
    """What a suspended stage waits for, in words."""
    envelope = stage.suspend_state or {}
    wait = envelope.get("wait")
    if wait == "sleep":
        return f"sleeping until {times.full(stage.due_at)}"
    if wait == "signal":
        topic = printable(str((envelope.get("state") or {}).get("topic", "?")))
        said = f"waiting for signal {topic!r} since {times.full(stage.started_at)}"
        if stage.due_at is not None:  # (a wait without a timeout is never due)
            said += f"; times out {times.full(stage.due_at)}"
        return said
    return f"waiting; next check {times.full(stage.due_at)}"


def attempts_table(view: RunView, times: Times) -> Table:
    table = Table(title="attempts", title_justify="left")
    started = times.column("started", [a.started_at for a in view.attempts], "%H:%M:%S.%f")
    table.add_column("stage", overflow="fold")
    table.add_column("attempt", justify="right", no_wrap=True)
    table.add_column("worker", overflow="fold", max_width=24)
    table.add_column(started.title, no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("error", overflow="fold", ratio=1)
    stage_status = {s.stage_id: s.status for s in view.stages}
    for a, when in zip(view.attempts, started.cells, strict=True):
        outcome = a.outcome
        cancelled = stage_status.get(a.stage_id) is StageStatus.CANCELLED
        if outcome in ("running", "suspended") and cancelled:
            outcome = "cancelled"
        table.add_row(
            safe_text(a.stage_id),
            str(a.attempt),
            safe_text(a.worker_id or "-"),
            when,
            duration(a.started_at, a.ended_at),
            Text(outcome, style=OUTCOME_STYLE.get(outcome, "")),
            Text(error_text(a.error)) if a.error else "",
        )
    return table


def run_header(view: RunView, times: Times) -> Table:
    run = view.run
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("run", safe_text(run.run_id))
    grid.add_row("workflow", safe_text(run.workflow_id))
    grid.add_row("version", safe_text(run.workflow_version or "(recorded before versions)"))
    grid.add_row("status", status(run.status.value))
    if run.metadata:
        grid.add_row("metadata", safe_text(labels(run.metadata)))
    if view.waiting is not None:
        grid.add_row("waiting", safe_text(view.waiting, "yellow"))
    if view.cancel_reason is not None:
        grid.add_row("reason", safe_text(view.cancel_reason, "red"))
    grid.add_row("created", times.full(run.created_at))
    grid.add_row("started", times.full(run.started_at))
    grid.add_row("finished", times.full(run.finished_at))
    if run.deadline is not None:
        grid.add_row("deadline", times.full(run.deadline))
    grid.add_row("duration", duration(run.started_at, run.finished_at))
    grid.add_row("input", Text(short(run.input, 200)))
    if run.error is not None:
        grid.add_row("error", Text(error_text(run.error, newlines=True), style="bold red"))
    if view.output is not None:
        grid.add_row("output", Text(short(view.output, 200)))
    return grid


def events_table(values: list[RunValueRecord], times: Times) -> Table:
    """The values as a table: key, value, the stage and attempt that set it, when."""
    set_at = times.column("set", [v.set_at for v in values], "%m-%d %H:%M:%S.%f")
    table = Table(title="Events", title_justify="left")
    table.add_column("key", style="cyan", overflow="fold")
    table.add_column("value", overflow="fold", ratio=1)
    table.add_column("set by", no_wrap=True)
    table.add_column(set_at.title, no_wrap=True)
    for v, when in zip(values, set_at.cells, strict=True):
        by = f"{v.stage_id}#{v.attempt}"
        table.add_row(safe_text(v.key), safe_text(compact_json(v.value)), safe_text(by), when)
    return table


def compact_json(value: Any) -> str:
    """`value` as JSON on one line, escaped."""
    return printable(json.dumps(value, ensure_ascii=False, default=str))


def run_details(view: RunView, times: Times) -> RenderableType:
    parts: list[RenderableType] = [
        run_header(view, times),
        Text(),
        stages_table(view, times, title="stages"),
    ]
    if view.attempts:
        parts += [Text(), attempts_table(view, times)]
    if view.values:
        parts += [Text(), events_table(view.values, times)]
    for stage in view.stages:
        if stage.status is StageStatus.FAILED and stage.error and stage.error.traceback:
            parts += [
                Text(),
                Text.assemble(
                    ("traceback of stage ", "bold red"), safe_text(stage.stage_id, "bold red")
                ),
                safe_text(stage.error.traceback, newlines=True),
            ]
    return Group(*parts)
