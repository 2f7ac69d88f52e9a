"""`stagewise runs events RUN_ID` and `stagewise runs stream RUN_ID KEY`: what a run
published and streamed, escaped like everything the CLI prints; `runs show` lists the
events too."""

from __future__ import annotations

import asyncio
import json

from tests.integration.node.cli_support import APP, one_error_line, run_id_in, stagewise
from tests.integration.node.test_node_cli import serve_until_idle


def test_a_runs_events_and_stream_from_the_command_line(db: str) -> None:
    code, out = stagewise("run", "talk", "--db", db, "--app", APP)
    assert code == 0, out
    run_id = run_id_in(out)
    asyncio.run(serve_until_idle(db, run_id))

    code, out = stagewise("runs", "events", run_id, "--db", db)
    assert code == 0, out
    assert "answer" in out and "Hello!" in out and "speak#1" in out
    code, out = stagewise("runs", "events", run_id, "--db", db, "--json")
    assert code == 0, out
    (event,) = json.loads(out)
    assert (event["key"], event["value"], event["attempt"]) == ("answer", {"text": "Hello!"}, 1)

    code, out = stagewise("runs", "stream", run_id, "tokens", "--db", db, "--raw")
    assert code == 0, out
    assert out == "Hello\\x1b[2J!\n"  # the escape shown, never sent
    code, out = stagewise("runs", "stream", run_id, "tokens", "--db", db, "--json", "--from", "1")
    assert code == 0, out
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(i["offset"], i["value"]) for i in lines] == [(1, "lo"), (2, "\x1b[2J!")]
    code, out = stagewise("runs", "stream", run_id, "tokens", "--db", db)
    assert code == 0, out
    assert "speak#1" in out and "\x1b" not in out

    code, out = stagewise("runs", "show", run_id, "--db", db, "--json")
    assert json.loads(out)["events"] == {"answer": {"text": "Hello!"}}
    code, out = stagewise("runs", "show", run_id, "--db", db)
    assert "Events" in out and "answer" in out


def test_an_unknown_run_is_one_line(db: str) -> None:
    assert stagewise("db", "upgrade", "--db", db)[0] == 0
    for command in (("runs", "events", "no-such-run"), ("runs", "stream", "no-such-run", "k")):
        code, out = stagewise(*command, "--db", db)
        assert code != 0 and "no-such-run" in one_error_line(out), out
