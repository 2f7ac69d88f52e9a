"""What the command line prints: consoles, one-line errors, and log formatting."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from stagewise import StagewiseError
from stagewise_node.cli._text import printable, safe_text

T = TypeVar("T")


def _width(stream: Any) -> int | None:
    """Rich's width (the terminal's), or 160 columns when writing to a pipe or a file
    (Rich would assume 80 and squeeze the tables)."""
    if "COLUMNS" in os.environ or (hasattr(stream, "isatty") and stream.isatty()):
        return None
    return 160


console = Console(highlight=False, width=_width(sys.stdout))
err_console = Console(stderr=True, highlight=False, width=_width(sys.stderr))
events_logger = logging.getLogger("stagewise.events")

DEBUG_ENV = "STAGEWISE_DEBUG"


class CliError(Exception):
    """A mistake in how the command was called: printed as one line, exit code 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr, on one line (controls escaped); returns the
    `typer.Exit` to raise."""
    line = Text.assemble(("error:", "bold red"), " ", safe_text(message))
    err_console.print(line, soft_wrap=True)  # the terminal wraps it, not Rich: one line
    return typer.Exit(code)


LOOP_ENV = "STAGEWISE_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (a dependency except on Windows): a worker
    is mostly waiting on database round trips, and uvloop's I/O path shortens each (in
    `bench/`, a 3-stage run's latency through a worker fell from ~42 to ~24 ms).
    `STAGEWISE_EVENT_LOOP=asyncio` keeps the standard loop."""
    if os.environ.get(LOOP_ENV, "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; any stagewise or usage error becomes one line on stderr
    and exit code 1 (set STAGEWISE_DEBUG=1 to see tracebacks)."""
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(main)
    except typer.Exit:
        raise
    except (CliError, StagewiseError) as exc:
        _debug_traceback(exc)
        raise fail(exc.message) from None
    except OSError as exc:
        _debug_traceback(exc)
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:
        _debug_traceback(exc)
        hint = "" if os.environ.get(DEBUG_ENV) else f" (set {DEBUG_ENV}=1 for the traceback)"
        raise fail(f"unexpected {type(exc).__name__}: {exc}{hint}") from None


def _debug_traceback(exc: BaseException) -> None:
    if os.environ.get(DEBUG_ENV):
        err_console.print(safe_text("".join(traceback.format_exception(exc)), newlines=True))


# --- logging ---------------------------------------------------------------------------

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _when(record: logging.LogRecord) -> str:
    at = datetime.fromtimestamp(record.created, UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class KeyValueFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...` (the structured fields last).

    One record, one line: control characters in the message and the fields (user text:
    errors, ids) are escaped, so a newline in a message cannot forge a line of its own. A
    traceback follows on lines of its own, each indented, so none of them reads as a record.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{_when(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = printable(f"{line}  {fields}" if fields else line)
        if record.exc_info:
            lines = printable(self.formatException(record.exc_info), newlines=True)
            line += "".join(f"\n    {text}" for text in lines.splitlines())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, the structured fields as keys."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _when(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


LogFormat = Literal["text", "json"]


def setup_logging(level: str, fmt: LogFormat = "text") -> None:
    """Send stagewise's logs (and warnings from everything else) to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    try:
        logging.getLogger("stagewise").setLevel(level.upper())
    except ValueError:
        raise CliError(f"unknown log level {level!r}") from None
