"""What the command line prints is safe: control characters of user text escaped in errors
and in the worker's text log (one record, one line), and no password of a database URL
ever shown in clear."""

from __future__ import annotations

import json
import logging
import signal
import sys

import pytest
from sqlalchemy import make_url

from stagewise_node.cli._output import JsonFormatter, KeyValueFormatter, fail
from tests.integration.node.cli_support import APP, one_error_line, stagewise
from tests.integration.node.flows import workflows
from tests.integration.node.processes import Workers

HOSTILE = "boom\x1b[2J\x1b]0;title\x07\nFAKE INFO stagewise.node: forged line\x9b"


def record(message: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("stagewise.node", logging.ERROR, __file__, 1, message, None, None)
    rec.__dict__.update(extra)
    return rec


def test_a_text_log_record_is_one_line_with_controls_escaped() -> None:
    line = KeyValueFormatter().format(record(HOSTILE, stage_id="s\x1b[31m\nx"))
    assert "\n" not in line
    assert "\x1b" not in line and "\x07" not in line and "\x9b" not in line
    assert "boom\\x1b[2J\\x1b]0;title\\x07\\nFAKE INFO" in line
    assert "stage_id=s\\x1b[31m\\nx" in line


def test_a_traceback_in_the_text_log_is_indented_and_escaped() -> None:
    try:
        raise RuntimeError(HOSTILE)
    except RuntimeError:
        rec = record("stage failed", exc_info=None)
        rec.exc_info = sys.exc_info()
    first, *rest = KeyValueFormatter().format(rec).split("\n")
    assert first.endswith("stage failed")
    assert rest and all(line.startswith("    ") for line in rest)
    assert "\x1b" not in "".join(rest)


def test_a_json_log_record_keeps_the_text_and_escapes_it() -> None:
    line = JsonFormatter().format(record(HOSTILE))
    assert "\n" not in line and "\x1b" not in line
    assert json.loads(line)["message"] == HOSTILE


def test_an_error_is_one_line_with_controls_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    fail(f"cannot do it: {HOSTILE}")
    err = capsys.readouterr().err
    assert one_error_line(err).startswith("error: cannot do it: boom\\x1b[2J")
    assert "\x1b" not in err


def test_a_query_password_never_appears_in_cli_errors() -> None:
    code, out = stagewise("runs", "list", "--db", "postgresql://u@127.0.0.1:1/db?password=secret")
    assert code == 1
    assert "cannot connect to the database at" in one_error_line(out)
    assert "password=***" in out
    assert "secret" not in out
    code, out = stagewise("worker", APP, "--db", "postgresql://u:secret@h:bad/db?password=secret")
    assert code == 1
    assert "invalid database URL" in one_error_line(out)
    assert "secret" not in out


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_the_worker_serving_line_hides_a_query_password(
    db_url: str, workers: Workers
) -> None:
    workers.url = (
        make_url(db_url)
        .update_query_dict({"password": "secret"})
        .render_as_string(hide_password=False)
    )
    worker = workers.spawn("masked")
    await workers.ready(worker)
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code(within=30) == 0
    log = worker.text()
    assert f"serving {len(workflows)} workflow(s)" in log
    assert "?password=***" in log
    assert "secret" not in log
