"""The `stagewise` command line (Typer + Rich).

    stagewise demo
    stagewise worker myapp.flows:registry --db postgresql://... --concurrency 8
    stagewise run my-workflow --input '{"n": 1}' --app myapp.flows:registry --wait
    stagewise runs list --status FAILED --since 2h --meta team=search
    stagewise runs show RUN_ID
    stagewise runs logs RUN_ID --follow
    stagewise runs stream RUN_ID tokens --raw
    stagewise runs cancel RUN_ID
    stagewise runs rerun RUN_ID --from STAGE --app myapp.flows:registry
    stagewise db upgrade

`--db` defaults to `$STAGEWISE_DATABASE_URL`, then to the embedded SQLite file
`./stagewise.db`; `--app` defaults to `$STAGEWISE_APP`. Mistakes (an unknown workflow,
input that is not JSON or fails the schema, an unreachable database) are one line on stderr
and exit code 1, never a traceback (set STAGEWISE_DEBUG=1 to see one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stagewise import RunFilter, RunStatus, StagewiseError
from stagewise_node.cli import _read_commands as _read_commands  # registers its commands
from stagewise_node.cli._apps import (
    App,
    Db,
    LogFormatChoice,
    Meta,
    StatusChoice,
    Utc,
    When,
    app,
    db_app,
    runs_app,
)
from stagewise_node.cli._compose import DEFAULT_DATABASE
from stagewise_node.cli._output import CliError, fail, run_async, setup_logging

__all__ = ["app", "main"]


@app.command()
def worker(
    target: Annotated[
        str, typer.Argument(metavar="MODULE:ATTR", help="A WorkflowRegistry or list of workflows.")
    ],
    db: Db = DEFAULT_DATABASE,
    concurrency: Annotated[int, typer.Option(min=1, help="Stages run at once.")] = 10,
    worker_id: Annotated[
        str | None,
        typer.Option(help="Unique among live workers; reuse it on restart to reclaim leases."),
    ] = None,
    lease: Annotated[float, typer.Option(min=0.1, help="Lease seconds of an attempt.")] = 30.0,
    heartbeat: Annotated[
        float | None, typer.Option(help="Heartbeat seconds (default: a third of the lease).")
    ] = None,
    poll_interval: Annotated[
        float, typer.Option(min=0.01, help="Fallback polling seconds (wake-ups come first).")
    ] = 2.0,
    drain_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds in-flight stages get on SIGTERM/SIGINT.")
    ] = 30.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    log_format: Annotated[LogFormatChoice, typer.Option()] = LogFormatChoice.text,
) -> None:
    """Serve workflows: run their stages and maintenance until SIGTERM/SIGINT, then drain."""
    from stagewise_node.cli._worker import exit_if_stage_threads_remain, serve

    try:
        setup_logging(log_level, log_format.value)
    except CliError as exc:
        raise fail(exc.message) from None
    run_async(
        serve(
            app=target,
            db=db,
            concurrency=concurrency,
            worker_id=worker_id,
            lease=lease,
            heartbeat=heartbeat,
            poll_interval=poll_interval,
            drain_timeout=drain_timeout,
        )
    )
    exit_if_stage_threads_remain()


@app.command()
def run(
    workflow_id: Annotated[str, typer.Argument(help="The workflow to run.")],
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="The run input: JSON, or @file.json.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the run live until it ends.")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up after this many seconds.")
    ] = None,
    priority: Annotated[int, typer.Option(help="Higher runs are claimed first.")] = 0,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Creating twice with the same key creates one run.")
    ] = None,
    meta: Meta = None,
    db: Db = DEFAULT_DATABASE,
    app_spec: App = None,
    utc: Utc = False,
) -> None:
    """Create a run of a workflow (validated against its input model)."""
    from stagewise_node.cli._listing import parse_meta
    from stagewise_node.cli._render import Times
    from stagewise_node.cli._runs import create_run, parse_input

    try:
        data = parse_input(input)
        metadata = parse_meta(meta or [])
    except CliError as exc:
        raise fail(exc.message) from None
    code = run_async(
        create_run(
            db=db,
            app=app_spec,
            workflow_id=workflow_id,
            input=data,
            wait=wait,
            give_up_after=timeout,
            priority=priority,
            idempotency_key=idempotency_key,
            times=Times(utc=utc),
            metadata=metadata,
        )
    )
    raise typer.Exit(code)


@runs_app.command("list")
def runs_list(
    status: Annotated[
        StatusChoice | None,
        typer.Option(case_sensitive=False, help="Only runs in this state (any case)."),
    ] = None,
    workflow: Annotated[str | None, typer.Option(help="Only runs of this workflow.")] = None,
    version: Annotated[
        str | None,
        typer.Option(help="Only runs pinned to this workflow version (see docs/deploys.md)."),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help=f"Only runs created then or later. {When}.")
    ] = None,
    until: Annotated[str | None, typer.Option(help=f"Only runs created before. {When}.")] = None,
    finished_since: Annotated[
        str | None, typer.Option(help="Only runs that finished then or later (as --since).")
    ] = None,
    finished_until: Annotated[
        str | None, typer.Option(help="Only runs that finished before (as --until).")
    ] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option(
            "--meta", metavar="KEY=VALUE", help="Only runs with this label (repeat: all of them)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Runs per page.")] = 50,
    cursor: Annotated[
        str | None, typer.Option(help="The page after the one that printed this cursor.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
    db: Db = DEFAULT_DATABASE,
    utc: Utc = False,
) -> None:
    """List runs, newest first, a page at a time (and the command for the next page)."""
    from stagewise_node.cli._listing import Listing, list_runs, parse_meta
    from stagewise_node.cli._render import Times

    try:
        where = RunFilter(
            status=RunStatus(status.value) if status else None,
            workflow_id=workflow,
            workflow_version=version,
            metadata=parse_meta(meta or []),
        )
    except (CliError, StagewiseError) as exc:
        raise fail(exc.message) from None
    times = (since, until, finished_since, finished_until)
    listing = Listing(where, *times, limit=limit, cursor=cursor)
    run_async(list_runs(db=db, listing=listing, as_json=json_output, times=Times(utc=utc)))


@runs_app.command("cancel")
def runs_cancel(
    run_id: Annotated[str, typer.Argument()],
    reason: Annotated[str | None, typer.Option(help="Recorded with the cancellation.")] = None,
    db: Db = DEFAULT_DATABASE,
) -> None:
    """Cancel a run; its running stages are cancelled at their next heartbeat."""
    from stagewise_node.cli._runs import cancel_run

    run_async(cancel_run(db=db, run_id=run_id, reason=reason))


@app.command()
def signal(
    run_id: Annotated[str, typer.Argument()],
    topic: Annotated[str, typer.Argument(help="The topic a signal stage waits on.")],
    payload: Annotated[str | None, typer.Option(help="JSON, or @file.json.")] = None,
    key: Annotated[str | None, typer.Option(help="Sending twice with it stores one.")] = None,
    db: Db = DEFAULT_DATABASE,
    app_spec: App = None,
) -> None:
    """Send a signal to a run: its waiting stage takes it, or its mailbox keeps it."""
    from stagewise_node.cli._runs import parse_input, send_signal

    try:
        data = parse_input(payload, "--payload")
    except CliError as exc:
        raise fail(exc.message) from None
    run_async(send_signal(db=db, app=app_spec, run_id=run_id, topic=topic, payload=data, key=key))


@runs_app.command("purge")
def runs_purge(
    finished_before: Annotated[
        str,
        typer.Option(
            help="Purge runs that finished before this: a duration back from now (30d, 12h) "
            "or a date and time."
        ),
    ],
    archive: Annotated[
        bool, typer.Option(help="First write each run as one JSON document to the blob store.")
    ] = False,
    batch: Annotated[
        int, typer.Option(help="Runs per transaction (its locks last that long).")
    ] = 500,
    db: Db = DEFAULT_DATABASE,
    utc: Utc = False,
) -> None:
    """Delete finished runs with their stages, events, logs, idempotency keys and blobs."""
    from stagewise_node.cli._purge import purge_runs
    from stagewise_node.cli._render import Times

    run_async(
        purge_runs(
            db=db,
            finished_before=finished_before,
            archive=archive,
            batch=batch,
            times=Times(utc=utc),
        )
    )


@runs_app.command("rerun")
def runs_rerun(
    run_id: Annotated[str, typer.Argument()],
    from_stage: Annotated[str, typer.Option("--from", help="The first stage to run again.")],
    db: Db = DEFAULT_DATABASE,
    app_spec: App = None,
) -> None:
    """Run a finished run again from a stage (later outputs are discarded)."""
    from stagewise_node.cli._runs import rerun

    run_async(rerun(db=db, app=app_spec, run_id=run_id, stage_id=from_stage))


@db_app.command("upgrade")
def db_upgrade(db: Db = DEFAULT_DATABASE) -> None:
    """Create or upgrade stagewise's tables to this version's schema."""
    from stagewise_node.cli._runs import db_upgrade as upgrade

    run_async(upgrade(db=db))


@app.command()
def demo(
    db: Annotated[
        Path | None,
        typer.Option(
            "--db",
            help="The SQLite file to use [default: <temp dir>/stagewise-demo-<user>/demo.db].",
        ),
    ] = None,
    fresh: Annotated[bool, typer.Option(help="Start from an empty database.")] = False,
) -> None:
    """Run an example workflow end to end on SQLite with a worker in this process."""
    from stagewise_node.cli._demo import demo as run_demo

    setup_logging("error")  # the demo's one failure is on purpose: the table shows it
    raise typer.Exit(run_async(run_demo(path=db, fresh=fresh)))


def main() -> None:
    """The `stagewise` console script."""
    app()
