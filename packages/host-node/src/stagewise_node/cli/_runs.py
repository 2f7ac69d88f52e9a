"""`stagewise run`, `stagewise runs ...` and `stagewise db upgrade`: short-lived clients."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Group
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from stagewise import (
    BlobStore,
    Clock,
    Persistence,
    RunCancel,
    RunClaimPending,
    RunCreate,
    RunRerunFrom,
    RunSignal,
    RunStatus,
)
from stagewise_node.cli._compose import client, connect, upgrade
from stagewise_node.cli._invocation import stagewise_command
from stagewise_node.cli._listing import run_json
from stagewise_node.cli._output import CliError, console
from stagewise_node.cli._render import (
    Times,
    duration,
    error_text,
    run_details,
    stages_table,
    status,
)
from stagewise_node.cli._text import json_text, safe_text
from stagewise_node.cli._views import RunView, load_run


def parse_input(raw: str | None, option: str = "--input") -> Any:
    """The run input from `--input` (or a signal's `--payload`): JSON text, or `@path` to a
    JSON file.

    Raises:
        CliError: not valid JSON, or the file cannot be read.
    """
    if raw is None:
        return None
    text = raw
    if raw.startswith("@"):
        try:
            text = Path(raw[1:]).read_text()
        except OSError as exc:
            raise CliError(f"cannot read the {option} file {raw[1:]!r}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{option} is not valid JSON: {exc}") from None


async def create_run(
    *,
    db: str,
    app: str | None,
    workflow_id: str,
    input: Any,
    wait: bool,
    give_up_after: float | None,
    priority: int,
    idempotency_key: str | None,
    times: Times,
    metadata: dict[str, str] | None = None,
) -> int:
    """Create a run (and, with `wait`, follow it to the end); returns the exit code."""
    async with client(db, app) as c:
        if not len(c.registry):
            raise CliError(
                f"cannot create a run of {workflow_id!r}: no workflows loaded "
                "(pass --app MODULE:ATTR or set STAGEWISE_APP)"
            )
        try:
            command = RunCreate(
                workflow_id=workflow_id,
                input=input,
                priority=priority,
                idempotency_key=idempotency_key,
                metadata=metadata or {},
            )
        except ValidationError as exc:  # an option out of bounds (--meta, --priority...)
            raise CliError(f"cannot create a run of {workflow_id!r}: {problems(exc)}") from None
        result = await c.kernel.dispatch(command)
        # Start it here (one short transaction) instead of waiting for a worker's claim
        # interval: its first jobs are enqueued now, and on PostgreSQL their NOTIFY wakes
        # an idle worker at once.
        await c.kernel.dispatch(RunClaimPending(limit=1))
        note = "" if result.created else " (replayed: the idempotency key was used before)"
        console.print(
            Text.assemble(
                "created run ", (result.run_id, "bold"), " of ", safe_text(workflow_id), note
            )
        )
        if not wait:
            return 0
        view = await follow(
            c.backend.persistence,
            c.backend.blob_store,
            result.run_id,
            clock=c.backend.clock,
            times=times,
            database=c.backend.url,
            give_up_after=give_up_after,
        )
        return report_end(view)


def problems(exc: ValidationError) -> str:
    """What pydantic refused, on one line: `where: why; ...`."""
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)
    )


NO_WORKER_NOTICE_AFTER = 3.0
"""Seconds `follow` waits before it says that no live worker can run the run (and between
its checks until it has said so)."""


async def follow(
    persistence: Persistence,
    blobs: BlobStore,
    run_id: str,
    *,
    clock: Clock,
    times: Times,
    database: str,
    give_up_after: float | None = None,
    every: float = 0.2,
) -> RunView:
    """Show the run's stages live until it finishes (or `give_up_after` seconds pass);
    elapsed times on `clock`, the one the run's times were written on. When no live worker
    can run it after a few seconds, say so once, naming `database` (and keep following).

    Raises:
        CliError: the run did not finish in time.
    """
    started = time.monotonic()
    view = await load_run(persistence, blobs, run_id, with_output=False)
    ask_at: float | None = started + NO_WORKER_NOTICE_AFTER
    with Live(console=console, refresh_per_second=10, transient=False) as live:
        while True:
            if ask_at is not None and time.monotonic() >= ask_at:
                # Whether any live worker can run it, from the workers' beats: asked only
                # now and then (a read of every worker's row), and said once. A worker
                # that has only just started has beaten by then (it beats on start).
                ask_at += NO_WORKER_NOTICE_AFTER
                seen = await load_run(
                    persistence, blobs, run_id, with_output=False, now=clock.now()
                )
                if seen.waiting is not None:
                    note = f"note: {seen.waiting} on {database}; still waiting (Ctrl-C stops "
                    live.console.print(Text(note + "the wait, not the run)", style="yellow"))
                    ask_at = None
            now = clock.now()
            head = Text.assemble(
                ("run ", ""),
                (run_id, "bold"),
                ("  ", ""),
                status(view.run.status.value),
                (f"  {duration(view.run.started_at, view.run.finished_at, now)}", "dim"),
            )
            body = stages_table(view, times, now=now)
            if view.run.status.is_terminal:
                live.update(Group(head, body))
                break
            live.update(Group(Spinner("dots", text=head), body))
            if give_up_after is not None and time.monotonic() - started > give_up_after:
                raise CliError(
                    f"run {run_id} is still {view.run.status.value} after {give_up_after:g}s "
                    f"(is a worker running? start one with `{stagewise_command()} worker`)"
                )
            await asyncio.sleep(every)
            view = await load_run(persistence, blobs, run_id, with_output=False)
    if not console.is_terminal:
        console.print()  # a pipe gets the last frame without its line end
    return await load_run(persistence, blobs, run_id)


def report_end(view: RunView) -> int:
    run = view.run
    if run.status is RunStatus.COMPLETED:
        console.print(Text("output: " + json_text(view.output)), soft_wrap=True)
        return 0
    message = f": {error_text(run.error)}" if run.error else ""
    console.print(Text(f"run {run.run_id} {run.status.value.lower()}{message}", "bold red"))
    return 1


async def show_run(*, db: str, run_id: str, as_json: bool, times: Times) -> None:
    backend = await connect(db, migrate=False)
    try:
        now = backend.clock.now()
        view = await load_run(backend.persistence, backend.blob_store, run_id, now=now)
    finally:
        await backend.close()
    if as_json:  # escaped JSON (the same values), not Rich's, which passes C1 controls
        console.print(Text(json_text(_as_json(view))), soft_wrap=True)
    else:
        console.print(run_details(view, times))


def _as_json(view: RunView) -> dict[str, Any]:
    run = view.run
    return {
        **run_json(run),
        "input": run.input,
        "output": view.output,
        "cancel_reason": view.cancel_reason,
        "waiting": view.waiting,
        "events": {v.key: v.value for v in view.values},
        "stages": [
            {
                "stage_id": s.stage_id,
                "group": s.group_index,
                "status": s.status.value,
                "attempt": s.attempt,
                "started_at": s.started_at.isoformat() if s.started_at else None,
                "finished_at": s.finished_at.isoformat() if s.finished_at else None,
                "error": s.error.message if s.error else None,
            }
            for s in view.stages
        ],
        "attempts": [
            {
                "stage_id": a.stage_id,
                "attempt": a.attempt,
                "worker_id": a.worker_id,
                "started_at": a.started_at.isoformat(),
                "ended_at": a.ended_at.isoformat() if a.ended_at else None,
                "outcome": a.outcome,
                "error": a.error,
            }
            for a in view.attempts
        ],
    }


async def cancel_run(*, db: str, run_id: str, reason: str | None) -> None:
    async with client(db, None, migrate=False) as c:
        result = await c.kernel.dispatch(RunCancel(run_id=run_id, reason=reason))
    if result.cancelled:
        console.print(Text.assemble("cancelled run ", safe_text(run_id, "bold")))
    else:
        console.print(
            safe_text(f"run {run_id} had already finished ({result.status.value}): unchanged")
        )


async def send_signal(
    *, db: str, app: str | None, run_id: str, topic: str, payload: Any, key: str | None
) -> None:
    async with client(db, app, migrate=False) as c:
        if not len(c.registry):
            raise CliError(
                "signal needs the workflows (the waiting stage's model checks the payload): "
                "pass --app MODULE:ATTR or set STAGEWISE_APP"
            )
        command = RunSignal(run_id=run_id, topic=topic, payload=payload, idempotency_key=key)
        result = await c.kernel.dispatch(command)
    if result.duplicate:
        said = "was sent before with this key: nothing new stored"
    elif result.consumed_by is not None:
        said = f"taken by stage {result.consumed_by}: the run goes on"
    else:
        said = "kept in the run's mailbox for the next wait on its topic"
    console.print(
        Text.assemble("signal ", safe_text(topic, "bold"), " to run ", safe_text(run_id, "bold"))
        + safe_text(f" {said}")
    )


async def rerun(*, db: str, app: str | None, run_id: str, stage_id: str) -> None:
    async with client(db, app, migrate=False) as c:
        if not len(c.registry):
            raise CliError("rerun needs the workflows: pass --app MODULE:ATTR or set STAGEWISE_APP")
        result = await c.kernel.dispatch(RunRerunFrom(run_id=run_id, stage_id=stage_id))
    console.print(
        Text.assemble(
            "run ",
            safe_text(run_id, "bold"),
            safe_text(
                f" is {result.status.value} again from {stage_id}: "
                f"{', '.join(result.reset_stages)} queued"
            ),
        )
    )


async def db_upgrade(*, db: str) -> None:
    revision = await upgrade(db)
    console.print(f"the database is at schema revision {revision}")
