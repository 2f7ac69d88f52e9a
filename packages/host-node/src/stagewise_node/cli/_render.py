"""Rich tables for runs, stages and attempts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from stagewise import RunRecord, StageRecord
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
}


def status(value: str) -> Text:
    return Text(value, style=STATUS_STYLE.get(value, ""))


def when(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def clock_time(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


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


def short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def runs_table(runs: Sequence[RunRecord]) -> Table:
    table = Table(title=f"{len(runs)} run(s)", title_justify="left")
    table.add_column("run id", no_wrap=True, min_width=36)
    table.add_column("workflow", overflow="fold")
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("created", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("error", overflow="fold", max_width=40)
    for run in runs:
        table.add_row(
            run.run_id,
            run.workflow_id,
            status(run.status.value),
            run.created_at.astimezone(UTC).strftime("%m-%d %H:%M:%S"),
            duration(run.started_at, run.finished_at),
            escape(short(run.error.message, 60)) if run.error else "",
        )
    return table


def stages_table(view: RunView, *, now: datetime | None = None, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("group", justify="right", no_wrap=True)
    table.add_column("stage", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("notes", overflow="fold", max_width=44)
    for stage in view.stages:
        table.add_row(
            str(stage.group_index + 1),
            stage.stage_id,
            status(stage.status.value),
            str(stage.attempt),
            clock_time(stage.started_at),
            duration(stage.started_at, stage.finished_at, now),
            _notes(view, stage),
        )
    return table


def _notes(view: RunView, stage: StageRecord) -> Text:
    notes = Text()
    if stage.progress is not None and not stage.status.is_terminal:
        notes.append(f"{stage.progress:.0f}% ")
    if stage.progress_message and not stage.status.is_terminal:
        notes.append(stage.progress_message)
    retried = [a for a in view.attempts_of(stage.stage_id) if a.outcome == "retried"]
    if retried:
        noun = "retry" if len(retried) == 1 else "retries"
        notes.append(
            f"{len(retried)} {noun}; last: {short(retried[-1].error or '', 60)}", style="red"
        )
    if stage.error is not None and stage.status.value == "FAILED":
        notes.append(short(stage.error.message, 80), style="bold red")
    if stage.status.value == "SUSPENDED" and stage.due_at is not None:
        notes.append(f"waiting; next check {clock_time(stage.due_at)}", style="magenta")
    return notes


def attempts_table(view: RunView) -> Table:
    table = Table(title="attempts", title_justify="left")
    table.add_column("stage", no_wrap=True)
    table.add_column("attempt", justify="right", no_wrap=True)
    table.add_column("worker", overflow="fold", max_width=24)
    table.add_column("started", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("error", overflow="fold", max_width=44)
    stage_status = {s.stage_id: s.status.value for s in view.stages}
    for a in view.attempts:
        outcome = a.outcome
        if outcome in ("running", "suspended") and stage_status.get(a.stage_id) == "CANCELLED":
            outcome = "cancelled"
        table.add_row(
            a.stage_id,
            str(a.attempt),
            a.worker_id or "-",
            clock_time(a.started_at),
            duration(a.started_at, a.ended_at),
            Text(outcome, style=OUTCOME_STYLE.get(outcome, "")),
            escape(short(a.error, 80)) if a.error else "",
        )
    return table


def run_header(view: RunView) -> Table:
    run = view.run
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("run", run.run_id)
    grid.add_row("workflow", run.workflow_id)
    grid.add_row("status", status(run.status.value))
    grid.add_row("created", when(run.created_at))
    grid.add_row("started", when(run.started_at))
    grid.add_row("finished", when(run.finished_at))
    grid.add_row("duration", duration(run.started_at, run.finished_at))
    grid.add_row("input", escape(short(run.input, 200)))
    if run.error is not None:
        grid.add_row("error", Text(f"{run.error.type}: {run.error.message}", style="bold red"))
    if view.output is not None:
        grid.add_row("output", escape(short(view.output, 200)))
    return grid


def run_details(view: RunView) -> RenderableType:
    parts: list[RenderableType] = [run_header(view), Text(), stages_table(view, title="stages")]
    if view.attempts:
        parts += [Text(), attempts_table(view)]
    failed = [s for s in view.stages if s.error is not None and s.error.traceback]
    for stage in failed:
        if stage.status.value == "FAILED" and stage.error is not None:
            parts += [
                Text(),
                Text(f"traceback of stage {stage.stage_id}:", style="bold red"),
                Text(stage.error.traceback or ""),
            ]
    return Group(*parts)
