"""stagewise-sql: the kernel's ports on SQLite (aiosqlite) and PostgreSQL (asyncpg).

    from stagewise_sql import SqlBackend

    async with await SqlBackend.connect("sqlite+aiosqlite:///stagewise.db") as backend:
        backend.persistence, backend.job_transport, backend.blob_store

`backend.kernel(registry)` wires a kernel to those ports. `metadata` and `render_item` let
an application manage our schema in its own Alembic environment (see the package README);
`count_statements()` counts what the database is sent, for tests and benchmarks.
"""

from stagewise._errors import DuplicateRecordError
from stagewise_sql._alembic import render_item
from stagewise_sql._backend import SqlBackend, SqlSettings, upgrade
from stagewise_sql._blobs import SqlBlobStore
from stagewise_sql._clock import DatabaseClock
from stagewise_sql._counting import Counts
from stagewise_sql._counting import counting as count_statements
from stagewise_sql._errors import (
    DatabaseUnavailableError,
    InvalidDatabaseUrlError,
    SchemaMissingError,
)
from stagewise_sql._migrate import MIGRATIONS, head_revision
from stagewise_sql._persistence import SqlPersistence, SqlTransaction
from stagewise_sql._schema import VERSION_TABLE, metadata
from stagewise_sql._transport import CHANNEL, SqlJobTransport

__all__ = [
    "CHANNEL",
    "MIGRATIONS",
    "VERSION_TABLE",
    "Counts",
    "DatabaseClock",
    "DatabaseUnavailableError",
    "DuplicateRecordError",
    "InvalidDatabaseUrlError",
    "SchemaMissingError",
    "SqlBackend",
    "SqlBlobStore",
    "SqlJobTransport",
    "SqlPersistence",
    "SqlSettings",
    "SqlTransaction",
    "count_statements",
    "head_revision",
    "metadata",
    "render_item",
    "upgrade",
]
