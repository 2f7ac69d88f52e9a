"""Alembic environment for stagewise's own migrations.

`stagewise_sql` runs it programmatically (`SqlBackend.connect(migrate=True)`,
`stagewise_sql.upgrade`), handing it a connection in `config.attributes["connection"]`.
Run from the alembic command line instead, it connects to `sqlalchemy.url` itself.
Our revisions are recorded in their own version table, so they never mix with the
application's migrations in the same database.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from stagewise_sql._schema import VERSION_TABLE, metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_url(url: str) -> None:
    from stagewise_sql._connect import parse_url

    engine = create_async_engine(parse_url(url))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def _main() -> None:
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"),
            target_metadata=metadata,
            version_table=VERSION_TABLE,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_from_url(config.get_main_option("sqlalchemy.url") or ""))


_main()
