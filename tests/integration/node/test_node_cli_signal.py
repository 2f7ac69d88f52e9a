"""`stagewise signal RUN_ID TOPIC --payload JSON|@file`: a signal from the command line,
kept in the run's mailbox or taken by its waiting stage; refusals in one line, nothing
written."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from stagewise_sql import SqlBackend
from tests.integration.node.cli_support import APP, one_error_line, run_id_in, stagewise
from tests.integration.node.test_node_cli import serve_until_idle


async def signals_of(db: str, run_id: str) -> list[tuple[str, object, str | None]]:
    async with await SqlBackend.connect(db) as backend, backend.persistence.transaction() as tx:
        rows = await tx.signals.for_run(run_id)
    return [(s.topic, s.payload, s.consumed_by) for s in rows]


def test_a_signal_from_the_command_line_reaches_the_waiting_stage(db: str, tmp_path: Path) -> None:
    code, out = stagewise("run", "approve", "--db", db, "--app", APP)
    assert code == 0, out
    run_id = run_id_in(out)
    payload = tmp_path / "approval.json"
    payload.write_text(json.dumps({"approved": True, "by": "cli"}))
    code, out = stagewise(
        "signal", run_id, "approval", "--payload", f"@{payload}", "--db", db, "--app", APP
    )
    assert code == 0, out
    assert "kept in the run's mailbox" in out  # no worker has started the run yet
    asyncio.run(serve_until_idle(db, run_id))
    code, out = stagewise("runs", "show", run_id, "--db", db, "--json")
    assert code == 0, out
    shown = json.loads(out)
    assert (shown["status"], shown["output"]) == ("COMPLETED", "cli")
    assert asyncio.run(signals_of(db, run_id)) == [
        ("approval", {"approved": True, "by": "cli"}, "approval")
    ]


def test_a_refused_signal_says_why_in_one_line_and_stores_nothing(db: str) -> None:
    code, out = stagewise("run", "approve", "--db", db, "--app", APP)
    run_id = run_id_in(out)
    code, out = stagewise("signal", run_id, "approval", "--payload", "{nope", "--db", db)
    assert code != 0 and "--payload is not valid JSON" in one_error_line(out)
    code, out = stagewise("signal", run_id, "approval", "--db", db)
    assert code != 0 and "signal needs the workflows" in one_error_line(out)
    code, out = stagewise("signal", "no-such-run", "approval", "--db", db, "--app", APP)
    assert code != 0 and "no-such-run" in one_error_line(out)
    assert asyncio.run(signals_of(db, run_id)) == []
