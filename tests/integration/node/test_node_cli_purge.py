"""`stagewise runs purge`: finished runs go, batch after batch, with a count; bad input is
one error line; it never creates a database."""

from __future__ import annotations

from stagewise.testing import TestEnvironment
from tests.integration.node.cli_support import one_error_line, stagewise
from tests.integration.node.test_node_cli_display import finished_run, on_the_database


def test_purge_deletes_the_finished_runs_before_the_cutoff_and_archives_them(db: str) -> None:
    async def three_finished(env: TestEnvironment) -> list[str]:
        return [await finished_run(env, "fails") for _ in range(3)]

    ids = on_the_database(db, three_finished)  # finished on 2026-07-01, long before now
    code, out = stagewise("runs", "purge", "--finished-before", "30d", "--archive", "--batch",
                          "2", "--db", db)  # fmt: skip
    assert code == 0, out
    assert "purged 3 run(s) finished before" in out
    assert "(3 archived to the blob store under archive/)" in out
    _, listed = stagewise("runs", "list", "--db", db)
    assert "0 run(s)" in listed
    code, out = stagewise("runs", "show", ids[0], "--db", db)
    assert code == 1 and "does not exist" in out
    code, out = stagewise("runs", "purge", "--finished-before", "30d", "--db", db)
    assert code == 0 and "purged 0 run(s)" in out


def test_purge_keeps_runs_that_finished_after_the_cutoff(db: str) -> None:
    run_id = on_the_database(db, lambda env: finished_run(env, "fails"))
    code, out = stagewise("runs", "purge", "--finished-before", "2026-06-30T00:00+00:00",
                          "--db", db)  # fmt: skip
    assert code == 0 and "purged 0 run(s)" in out
    code, _ = stagewise("runs", "show", run_id, "--db", db)
    assert code == 0


def test_bad_input_is_one_error_line(db: str) -> None:
    code, out = stagewise("runs", "purge", "--finished-before", "30d", "--db", db)
    assert code == 1 and "no stagewise database" in one_error_line(out)  # not created
    on_the_database(db, lambda env: finished_run(env, "fails"))
    code, out = stagewise("runs", "purge", "--finished-before", "banana", "--db", db)
    assert code == 1
    assert "--finished-before 'banana' is neither a duration" in one_error_line(out)
    code, out = stagewise("runs", "purge", "--finished-before", "1d", "--batch", "0", "--db", db)
    assert code == 1 and "--batch must be from 1 to 10000" in one_error_line(out)
