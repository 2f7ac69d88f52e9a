"""`stagewise demo`: the document pipeline on the embedded SQLite default, with a node host
in this process, a live progress table, and a summary at the end."""

from __future__ import annotations

import getpass
import os
import shlex
import tempfile
from pathlib import Path

from rich.table import Table
from rich.text import Text

from stagewise import KernelSettings, RunCreate, RunStatus, WorkflowRegistry
from stagewise_node._settings import NodeHostSettings
from stagewise_node.cli._compose import build_host, connect, sqlite_url
from stagewise_node.cli._invocation import stagewise_command
from stagewise_node.cli._output import console
from stagewise_node.cli._render import Times, duration, error_text, short, status
from stagewise_node.cli._runs import follow
from stagewise_node.cli._views import RunView
from stagewise_node.demo import DEMO_INPUT, workflows

DEMO_TIMEOUT = 60.0

HOST_SETTINGS = NodeHostSettings(
    concurrency=4,
    job_poll_interval=0.5,
    claim_interval=0.5,
    suspended_poll_interval=0.5,
    reap_interval=2.0,
    flush_interval=0.5,
    heartbeat_interval=1.0,
    drain_timeout=5.0,
)
KERNEL_SETTINGS = KernelSettings(lease_seconds=5.0, sync_workers=4)


def default_demo_path() -> Path:
    """`<temp dir>/stagewise-demo-<user>/demo.db`: out of the way of any project, kept
    between runs so that `stagewise runs list --db ...` can look at earlier demos."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "user"
    return Path(tempfile.gettempdir()) / f"stagewise-demo-{user}" / "demo.db"


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def demo(*, path: Path | None, fresh: bool) -> int:
    """Run the demo; returns the exit code (0 when the run completed)."""
    path = (path or default_demo_path()).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    if fresh:
        remove_database(path)
    url = sqlite_url(path)
    console.print(
        Text.assemble(
            ("stagewise demo", "bold"),
            ": parse → [count_words | keywords | translate] → summarize, on SQLite, "
            "with a worker in this process.\n",
            (
                "count_words fails once and is retried; translate suspends on an external "
                "job and resumes when it is done.",
                "dim",
            ),
        )
    )
    console.print(f"database: {path}\n", style="dim")
    backend = await connect(url)
    host = build_host(
        backend,
        WorkflowRegistry(workflows),
        worker_id=f"demo-{os.getpid()}",
        settings=HOST_SETTINGS,
        kernel_settings=KERNEL_SETTINGS,
    )
    try:
        await host.start()
        created = await host.kernel.dispatch(
            RunCreate(workflow_id="document-pipeline", input=DEMO_INPUT)
        )
        view = await follow(
            backend.persistence,
            backend.blob_store,
            created.run_id,
            clock=backend.clock,
            times=Times(),
            database=backend.url,
            give_up_after=DEMO_TIMEOUT,
            every=0.1,
        )
    finally:
        await host.stop(drain_timeout=HOST_SETTINGS.drain_timeout)
        await host.kernel.aclose()
        await backend.close()
    stats = host.stats()
    console.print()
    console.print(summary_table(view))
    run = view.run
    if run.status is RunStatus.COMPLETED:
        console.print(
            f"\n[bold green]run completed[/] in {duration(run.started_at, run.finished_at)}"
        )
        console.print(Text(f"output: {short(view.output, 300)}"), soft_wrap=True)
    else:
        reason = f": {error_text(run.error)}" if run.error else ""
        console.print(Text(f"\nrun {run.status.value.lower()}{reason}", style="bold red"))
    console.print(
        f"worker {stats.worker_id}: {stats.jobs_processed} job(s) — {stats.jobs_succeeded} "
        f"succeeded, {stats.jobs_retried} retried, {stats.jobs_failed} failed; "
        f"{stats.ticks} tick(s)",
        style="dim",
    )
    stagewise, db = stagewise_command(), shlex.quote(f"sqlite:///{path}")
    console.print(
        Text(
            "\nlook closer:\n"
            f"  {stagewise} runs show {run.run_id} --db {db}\n"
            f"  {stagewise} runs list --db {db}",
            style="dim",
        ),
        soft_wrap=True,
    )
    return 0 if run.status is RunStatus.COMPLETED else 1


def summary_table(view: RunView) -> Table:
    table = Table(title="summary", title_justify="left")
    table.add_column("stage", no_wrap=True)
    table.add_column("group", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("what happened", overflow="fold")
    for stage in view.stages:
        table.add_row(
            stage.stage_id,
            str(stage.group_index + 1),
            status(stage.status.value),
            str(stage.attempt),
            duration(stage.started_at, stage.finished_at),
            _story(view, stage.stage_id),
        )
    return table


def _story(view: RunView, stage_id: str) -> Text:
    story = Text()
    for attempt in view.attempts_of(stage_id):
        if story:
            story.append("; ")
        if attempt.outcome == "retried":
            error = error_text(attempt.error or "")
            story.append(f"attempt {attempt.attempt} failed ({error})", style="red")
            continue
        if attempt.suspended_at is not None:
            waited = duration(attempt.suspended_at, attempt.ended_at)
            story.append(f"suspended, resumed after {waited}", style="magenta")
            if attempt.outcome != "completed":
                story.append(f" ({attempt.outcome})")
            continue
        story.append(attempt.outcome)
    return story
