"""The command line's Typer apps and the options its commands share (the commands are in
`__init__` and `_read_commands`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from stagewise_node.cli._compose import APP_ENV, DATABASE_ENV

app = typer.Typer(
    name="stagewise",
    help="stagewise: durable workflows. Start with `stagewise demo`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
runs_app = typer.Typer(help="Look at and act on runs.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the database schema.", no_args_is_help=True)
workers_app = typer.Typer(help="Look at the fleet's workers.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")
app.add_typer(workers_app, name="workers")

Db = Annotated[
    str,
    typer.Option(
        "--db",
        envvar=DATABASE_ENV,
        help="Database URL: sqlite:///path.db or postgresql://user@host/db.",
        show_default=True,
    ),
]
App = Annotated[
    str | None,
    typer.Option(
        "--app",
        envvar=APP_ENV,
        help="Where the workflows are: MODULE:ATTR (a WorkflowRegistry or list of workflows).",
    ),
]

Utc = Annotated[
    bool, typer.Option("--utc", help="Show times in UTC (default: local time, with its offset).")
]
Meta = Annotated[
    list[str] | None,
    typer.Option("--meta", metavar="KEY=VALUE", help="A metadata label (repeat for more)."),
]
When = "A duration back from now (30m, 2h, 7d) or a date and time (2026-12-03T09:00)"


class LogFormatChoice(StrEnum):
    text = "text"
    json = "json"


class StatusChoice(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
