"""`stagewise runs logs RUN_ID [--stage ID] [--follow] [--json]`: a run's log lines.

Each line shows its time (local with its offset, or `--utc`), stage and attempt, level,
message and fields, escaped like everything the CLI prints (`_text`). `--follow` reads the
lines after the last one shown every half second (on the kernel's clock) until the run has
ended: `Kernel.run_logs` reads the run's status before its lines, so the page on which the
status is terminal holds the last of them, and nothing is cut off. It then prints how the
run ended, with the exit code of `stagewise run --wait`: 0 for COMPLETED, 1 otherwise.
Ctrl-C stops it with exit code 130 and nothing more printed (`_output.run_async`).
"""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text

from stagewise import Kernel, LogLine, RunNotFoundError, RunStatus
from stagewise_node.cli._compose import client
from stagewise_node.cli._output import console
from stagewise_node.cli._render import Times, error_text
from stagewise_node.cli._text import json_text, printable, safe_text

FOLLOW_EVERY = 0.5
"""Seconds between two reads of a followed run's log."""

LEVEL_STYLE = {"debug": "dim", "warning": "yellow", "error": "bold red", "critical": "bold red"}


async def show_logs(
    *,
    db: str,
    run_id: str,
    stage_id: str | None,
    follow: bool,
    as_json: bool,
    times: Times,
    every: float = FOLLOW_EVERY,
) -> int:
    """Print the run's log (and with `follow`, what it writes until it ends); the exit
    code."""
    async with client(db, None, migrate=False) as c:
        after = 0
        while True:
            page = await c.kernel.run_logs(run_id, after=after, stage_id=stage_id)
            for line in page.lines:
                console.print(
                    _json_line(line) if as_json else log_line(line, times), soft_wrap=True
                )
            after = page.next_after
            if page.more:
                continue  # more already written: no wait
            if not follow:
                return 0
            if page.status.is_terminal:
                return await _ended(c.kernel, run_id, as_json)
            await c.kernel.clock.sleep(every)


def log_line(line: LogLine, times: Times) -> Text:
    """`time  stage#attempt  LEVEL  message  key=value ...`, escaped."""
    where = "-" if line.stage_id is None else line.stage_id
    if line.attempt is not None:
        where += f"#{line.attempt}"
    fields = "  " + " ".join(f"{k}={_field(v)}" for k, v in line.fields.items())
    return Text.assemble(
        (times.full(line.at), "dim"),
        "  ",
        safe_text(where, "cyan"),
        "  ",
        safe_text(f"{line.level.upper():<7}", LEVEL_STYLE.get(line.level, "")),
        " ",
        safe_text(line.message),
        safe_text(fields if line.fields else "", "dim"),
    )


def _field(value: Any) -> str:
    return printable(value if isinstance(value, str) else json.dumps(value, default=str))


def _json_line(line: LogLine) -> Text:
    data = {
        "id": line.id,
        "at": line.at.isoformat(),
        "run_id": line.run_id,
        "stage_id": line.stage_id,
        "attempt": line.attempt,
        "level": line.level,
        "message": line.message,
        "fields": line.fields,
    }
    return Text(json_text(data, indent=None))


async def _ended(kernel: Kernel, run_id: str, as_json: bool) -> int:
    """Print how the run ended; 0 when it completed, 1 otherwise (as `run --wait`)."""
    run = await kernel.get_run(run_id)
    if run is None:  # deleted since the last read
        raise RunNotFoundError(run_id)
    code = 0 if run.status is RunStatus.COMPLETED else 1
    if as_json:
        error = run.error.to_json() if run.error else None
        end = {"run_id": run.run_id, "status": run.status.value, "error": error}
        console.print(Text(json_text(end, indent=None)), soft_wrap=True)
        return code
    message = f": {error_text(run.error)}" if run.error else ""
    style = "bold green" if code == 0 else "bold red"
    console.print(safe_text(f"run {run.run_id} {run.status.value.lower()}{message}", style))
    return code
