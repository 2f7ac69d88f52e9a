"""The command line's commands that read runs and workers: `runs logs`, `runs show`,
`runs events`, `runs stream` and `workers list` (registered on the apps of `_apps`)."""

from __future__ import annotations

from typing import Annotated

import typer

from stagewise_node.cli._apps import Db, Utc, runs_app, workers_app
from stagewise_node.cli._compose import DEFAULT_DATABASE
from stagewise_node.cli._output import run_async


@runs_app.command("logs")
def runs_logs(
    run_id: Annotated[str, typer.Argument()],
    stage: Annotated[str | None, typer.Option(help="Only the lines of this stage.")] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Keep printing new lines until the run ends (exit 1 unless "
            "it completed), or Ctrl-C.",
        ),
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line instead.")
    ] = False,
    db: Db = DEFAULT_DATABASE,
    utc: Utc = False,
) -> None:
    """Print a run's log lines in the order they were written."""
    from stagewise_node.cli._logs import show_logs
    from stagewise_node.cli._render import Times

    code = run_async(
        show_logs(
            db=db,
            run_id=run_id,
            stage_id=stage,
            follow=follow,
            as_json=json_output,
            times=Times(utc=utc),
        )
    )
    raise typer.Exit(code)


@workers_app.command("list")
def workers_list(db: Db = DEFAULT_DATABASE, utc: Utc = False) -> None:
    """List the workers: live ones first, then those gone silent or stopped (rows age out
    a day after a worker was last seen)."""
    from stagewise_node.cli._render import Times
    from stagewise_node.cli._workers import list_workers

    run_async(list_workers(db=db, times=Times(utc=utc)))


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument()],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
    db: Db = DEFAULT_DATABASE,
    utc: Utc = False,
) -> None:
    """Show a run: its stages, every attempt, timings and errors."""
    from stagewise_node.cli._render import Times
    from stagewise_node.cli._runs import show_run

    run_async(show_run(db=db, run_id=run_id, as_json=json_output, times=Times(utc=utc)))


@runs_app.command("events")
def runs_events(
    run_id: Annotated[str, typer.Argument()],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
    db: Db = DEFAULT_DATABASE,
    utc: Utc = False,
) -> None:
    """Show the values a run published (ctx.set_event): the latest under each key."""
    from stagewise_node.cli._render import Times
    from stagewise_node.cli._values import show_events

    run_async(show_events(db=db, run_id=run_id, as_json=json_output, times=Times(utc=utc)))


@runs_app.command("stream")
def runs_stream(
    run_id: Annotated[str, typer.Argument()],
    key: Annotated[str, typer.Argument(help="The stream's key (ctx.write_stream).")],
    offset: Annotated[int, typer.Option("--from", min=0, help="The first offset shown.")] = 0,
    raw: Annotated[
        bool, typer.Option("--raw", help="Only the items, one after another (tokens).")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line instead.")
    ] = False,
    db: Db = DEFAULT_DATABASE,
    utc: Utc = False,
) -> None:
    """Follow one of a run's streams: every item, as it is written, until the stream is
    closed or the run ends (or Ctrl-C)."""
    from stagewise_node.cli._render import Times
    from stagewise_node.cli._values import show_stream

    run_async(
        show_stream(
            db=db,
            run_id=run_id,
            key=key,
            offset=offset,
            as_json=json_output,
            raw=raw,
            times=Times(utc=utc),
        )
    )
