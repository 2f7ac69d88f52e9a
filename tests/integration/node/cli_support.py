"""Helpers of the command-line tests: run `stagewise ...` in this process, read its output."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from stagewise_node.cli import app

APP = "tests.integration.node.flows:workflows"


def stagewise(*args: str) -> tuple[int, str]:
    """Exit code and output (stdout and stderr) of `stagewise *args`."""
    result = CliRunner().invoke(app, list(args))
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed, result.output
    # no traceback printed, but those of failed stages that `runs show` puts after its tables
    shown = result.output.split("traceback of stage")[0]
    assert not re.search(r"^Traceback", shown, re.MULTILINE), result.output
    return result.exit_code, result.output


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: "), output
    return lines[0]


def run_id_in(output: str) -> str:
    match = re.search(r"run ([0-9a-f-]{36})", output)
    assert match, output
    return match.group(1)
