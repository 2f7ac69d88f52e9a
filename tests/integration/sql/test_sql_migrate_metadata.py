"""Migrations 0005 to 0009 on a database that has runs: they come out with no attempt
numbers kept from a rerun, no metadata, no deadline and no signals, and are listed and
matched like runs created after them."""

from __future__ import annotations

from sqlalchemy import Connection, insert
from sqlalchemy.ext.asyncio import create_async_engine

from stagewise import RunFilter
from stagewise._records import Changeset
from stagewise_sql import SqlBackend
from stagewise_sql._connect import parse_url
from stagewise_sql._migrate import alembic_config
from stagewise_sql._rows import run_values
from stagewise_sql._schema import runs
from tests.contract.factories import run


def _at_0004_with_a_run(conn: Connection) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = conn
    command.upgrade(config, "0004")
    values = run_values(run("old", workflow_id="wf"))
    for later in ("metadata", "attempts_before", "deadline", "signal_seq"):  # not there yet
        del values[later]
    conn.execute(insert(runs).values(values))


async def test_runs_made_before_metadata_have_none_and_are_listed(empty_db_url: str) -> None:
    engine = create_async_engine(parse_url(empty_db_url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_at_0004_with_a_run)
    finally:
        await engine.dispose()

    async with await SqlBackend.connect(empty_db_url) as backend:  # upgrades to head
        async with backend.persistence.transaction() as tx:
            await tx.apply(Changeset(new_runs=(run("new", created=1, metadata={"k": "v"}),)))
        async with backend.persistence.transaction() as tx:
            old = await tx.runs.get("old")
            every = await tx.runs.find()
            labelled = await tx.runs.find(RunFilter(metadata={"k": "v"}))

    assert old == run("old", workflow_id="wf")
    assert old is not None and old.metadata == {} and old.attempts_before == {}
    assert old.deadline is None and old.signal_seq == 0
    assert [r.run_id for r in every] == ["new", "old"]
    assert [r.run_id for r in labelled] == ["new"]
