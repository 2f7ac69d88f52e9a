"""Schema versions: check the database against the code, and upgrade it with Alembic.

Our revisions live in `stagewise_sql/migrations` and are recorded in their own version table
(`stagewise_alembic_version`). A database can be in one of these states:

* no stagewise tables: migrate (or, with `migrate=False`, refuse, naming the missing table);
* our version table at a revision this code knows: upgrade to head if behind (or refuse);
* a revision this code does not know: written by newer code, refuse (never guess);
* our tables but no version table of ours: the application manages our schema in its own
  Alembic environment (see the README); check that the tables exist and use them.

Upgrades hold a lock (PostgreSQL: an advisory transaction lock; SQLite: the write lock of
`BEGIN IMMEDIATE`), so processes starting together migrate once.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, column, inspect, select, table, text

from stagewise._errors import SchemaVersionError
from stagewise_sql._engine import Database
from stagewise_sql._errors import UPGRADE_HINT, SchemaMissingError
from stagewise_sql._schema import TABLES, VERSION_TABLE

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Alembic is imported only when a migration is needed or asked about: importing it takes
# longer than the rest of a worker's start-up, and a start that finds the schema current
# (the usual one) checks the version row with a plain SELECT.

MIGRATIONS = Path(__file__).parent / "migrations"
HEAD = "0011"
"""The newest revision in `migrations/versions` (a test keeps the two in step)."""
_VERSION = table(VERSION_TABLE, column("version_num"))
_LOCK_KEY = 0x5354_4147_4557  # "STAGEW": the advisory lock that serializes upgrades


def alembic_config() -> Config:
    """An Alembic `Config` for our migrations (for `alembic.command` calls)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


@cache
def _known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _scripts().walk_revisions())


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _missing_tables(connection: Connection) -> list[str]:
    present = set(inspect(connection).get_table_names())
    return [t.name for t in TABLES if t.name not in present]


def _check(connection: Connection, *, migrate: bool, url: str) -> bool:
    """Refuse what cannot be used; True when an upgrade is needed (and allowed)."""
    current = _current(connection)
    if current is not None and current not in _known_revisions():
        raise SchemaVersionError(
            f"the database at {url} has stagewise schema revision {current!r}, which this "
            f"version of stagewise-sql does not know (it knows up to {head_revision()!r}); "
            "it was migrated by a newer stagewise-sql: upgrade stagewise-sql"
        )
    missing = _missing_tables(connection)
    if current is None and missing and len(missing) < len(TABLES):
        # Some of our tables but not all, and no version table of ours: an application
        # manages our schema in its own Alembic environment, and has not caught up.
        raise SchemaMissingError(missing[0], url)
    needs_upgrade = (current is None and bool(missing)) or (
        current is not None and current != head_revision()
    )
    if needs_upgrade and not migrate:
        if current is None:
            raise SchemaMissingError(missing[0], url)
        raise SchemaVersionError(
            f"the database at {url} has stagewise schema revision {current!r}, but this "
            f"code needs {head_revision()!r}; {UPGRADE_HINT}"
        )
    return needs_upgrade


def _upgrade(connection: Connection, *, url: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    # Checked again under the lock: another process may have migrated meanwhile.
    if _check(connection, migrate=True, url=url):
        from alembic import command

        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


async def ensure_schema(db: Database, *, migrate: bool) -> None:
    """Make sure the database has our schema at the head revision.

    Raises:
        SchemaMissingError: a table is missing and `migrate` is False.
        SchemaVersionError: the schema is older (and `migrate` is False) or newer than the
            code.
        DatabaseUnavailableError: the database cannot be reached.
    """
    url = db.url_display
    if await _at_head(db):
        return
    # A read first: most starts find the schema current and take no lock at all.
    async with db.single(write=False) as link:
        needed = await link.run_sync(lambda c: _check(c, migrate=migrate, url=url))
    if needed:
        async with db.transaction() as link:
            await link.run_sync(lambda c: _upgrade(c, url=url))


async def _at_head(db: Database) -> bool:
    """The quick check: the version row says `HEAD`. Anything else (no version table, an
    older or newer revision, an error) goes to the full check, which explains it."""
    try:
        async with db.single(write=False) as link:
            rows = (await link.execute(select(_VERSION.c.version_num))).all()
    except Exception:
        return False
    return [row[0] for row in rows] == [HEAD]


async def current_revision(db: Database) -> str | None:
    """Our schema revision in the database (None: never migrated, or managed elsewhere)."""
    async with db.single(write=False) as link:
        return await link.run_sync(_current)
