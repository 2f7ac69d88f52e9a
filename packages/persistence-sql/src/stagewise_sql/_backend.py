"""`SqlBackend`: one database, and the three ports stagewise keeps in it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType

from sqlalchemy import URL, Connection, inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from stagewise import (
    Clock,
    Event,
    EventSink,
    IdGenerator,
    Kernel,
    KernelSettings,
    Plugin,
    Scheduler,
    SystemClock,
    WakeCommand,
    WorkflowSource,
    create_kernel,
)
from stagewise._errors import PersistenceError
from stagewise_sql._blobs import SqlBlobStore
from stagewise_sql._clock import DatabaseClock
from stagewise_sql._connect import create_engine, display_url, is_memory_sqlite, parse_url
from stagewise_sql._engine import Database
from stagewise_sql._errors import DatabaseNotFoundError, SchemaMissingError
from stagewise_sql._feed import SqlChangeFeed
from stagewise_sql._migrate import current_revision, ensure_schema
from stagewise_sql._persistence import SqlPersistence
from stagewise_sql._schema import TABLES, VERSION_TABLE
from stagewise_sql._transport import SqlJobTransport


@dataclass(frozen=True, slots=True)
class SqlSettings:
    """Connection settings (the defaults suit most deployments)."""

    pool_size: int = 10
    """Pooled connections (PostgreSQL may open as many again under load)."""
    busy_timeout: float = 5.0
    """SQLite: seconds to wait for another process's write lock before giving up."""
    connect_timeout: float = 10.0
    """PostgreSQL: seconds to wait for a new connection."""
    echo: bool = False
    """Log every statement (SQLAlchemy's `echo`)."""


class SqlBackend:
    """Persistence, job transport and blob store on one SQLite or PostgreSQL database.

        backend = await SqlBackend.connect("sqlite+aiosqlite:///stagewise.db")
        kernel = backend.kernel(registry)
        ...
        await backend.close()

    or, to close it on the way out::

        async with await SqlBackend.connect(url) as backend:
            ...

    `kernel()` wires a kernel to the three ports (`create_kernel` with them, for the
    pieces you want to choose yourself); `stagewise_node.node_host` adds a worker host.
    """

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self.clock = clock
        """What leases, due times and beats are judged by: a `DatabaseClock` unless a clock
        was given to `connect`."""
        self.persistence = SqlPersistence(db)
        self.job_transport = SqlJobTransport(db, clock)
        self.blob_store = SqlBlobStore(db)
        self.changes = SqlChangeFeed(db)
        """Hints of other processes' commits, for the kernel's waiting readers."""

    @classmethod
    async def connect(
        cls,
        url: str | URL,
        *,
        migrate: bool = True,
        clock: Clock | None = None,
        local_clock: Clock | None = None,
        settings: SqlSettings | None = None,
    ) -> SqlBackend:
        """Open the database at `url`, check its schema and upgrade it if allowed.

        Args:
            url: `sqlite+aiosqlite:///path.db` (or `sqlite:///path.db`; `sqlite://` for an
                in-memory database) or `postgresql+asyncpg://user:pw@host/db` (or
                `postgresql://...`).
            migrate: create the schema, or upgrade it to this code's revision when it is
                behind. With False, nothing is created or changed: not even a SQLite file.
            clock: the time every lease, due time and beat is judged by, used as given (a
                `FakeClock` in tests, to skip time). By default the database's clock
                (`DatabaseClock`: this machine's clock plus its offset from the database's,
                measured now and every minute), so that machines whose clocks disagree
                still agree on every lease.
            local_clock: the machine's clock the database's is measured against (the
                system clock by default; a skewed one in tests). Not with `clock`.
            settings: pool size and timeouts.

        Raises:
            InvalidDatabaseUrlError: the URL is malformed or names an unsupported database.
            DatabaseUnavailableError: the server cannot be reached.
            DatabaseNotFoundError: `migrate` is False and there is no stagewise database
                at `url` (no SQLite file, or no stagewise table): a `SchemaMissingError`.
            SchemaMissingError: a stagewise table is missing and `migrate` is False.
            SchemaVersionError: the schema is behind (with `migrate=False`) or ahead of
                this code.
            PersistenceError: the database refused us (no such database, permissions...).
        """
        if clock is not None and local_clock is not None:
            raise ValueError("give clock (used as is) or local_clock (measured), not both")
        settings = settings or SqlSettings()
        parsed = parse_url(url)
        _check_sqlite_directory(parsed)
        file = _sqlite_file(parsed)
        if not migrate and file is not None and not file.exists():  # never create it
            raise DatabaseNotFoundError(display_url(parsed), TABLES[0].name, "no such file")
        engine = create_engine(
            parsed,
            pool_size=settings.pool_size,
            busy_timeout=settings.busy_timeout,
            connect_timeout=settings.connect_timeout,
            echo=settings.echo,
        )
        db = Database(engine)
        db.url_display = display_url(parsed)  # query-parameter passwords hidden too
        try:
            try:
                await ensure_schema(db, migrate=migrate)
            except SchemaMissingError as exc:
                if await _has_no_stagewise_table(db):
                    raise DatabaseNotFoundError(
                        db.url_display, exc.table, f"table {exc.table!r} does not exist"
                    ) from exc
                raise
            if clock is None:
                clock = DatabaseClock(db, local_clock or SystemClock())
                await clock.measure()
                clock.start()
        except BaseException:
            if isinstance(clock, DatabaseClock):
                await clock.close()
            await db.close()
            raise
        return cls(db, clock)

    def kernel(
        self,
        registry: WorkflowSource,
        *,
        scheduler: Scheduler | None = None,
        event_sink: EventSink | None = None,
        plugins: Sequence[Plugin] = (),
        settings: KernelSettings | None = None,
        ids: IdGenerator | None = None,
    ) -> Kernel:
        """A kernel on this database's persistence, job transport and blob store, timed by
        the backend's clock.

        Args:
            registry: the workflows it runs (a `WorkflowRegistry`).
            scheduler: where the kernel leaves wake-up hints (a host's `HostScheduler`);
                without one they are dropped, and hosts find the work at their polls.
            event_sink: where this kernel's `outbox.flush` delivers events; without one
                they are delivered to nobody (plugins still get theirs).
            plugins, settings, ids: as for `create_kernel`.
        """
        return create_kernel(
            persistence=self.persistence,
            blob_store=self.blob_store,
            job_transport=self.job_transport,
            event_sink=_NoSink() if event_sink is None else event_sink,
            scheduler=_NoHints() if scheduler is None else scheduler,
            clock=self.clock,
            registry=registry,
            plugins=plugins,
            ids=ids,
            settings=settings,
            changes=self.changes,
        )

    @property
    def dialect(self) -> str:
        """`"sqlite"` or `"postgresql"`."""
        return self._db.dialect

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine, for health checks and tools.

        Statements run on it directly bypass stagewise's connection rules (SQLite's write
        lock queue, retries, error translation).
        """
        return self._db.engine

    @property
    def url(self) -> str:
        """The database URL, every password hidden (user-info and query parameters)."""
        return self._db.url_display

    async def schema_revision(self) -> str | None:
        """Our schema revision recorded in the database (None if managed elsewhere)."""
        return await current_revision(self._db)

    async def close(self) -> None:
        """Stop measuring the clock; close the LISTEN connections, the change feed's watch
        and every pooled connection."""
        if isinstance(self.clock, DatabaseClock):
            await self.clock.close()
        await self.job_transport.close()
        await self.changes.close()
        await self._db.close()

    async def __aenter__(self) -> SqlBackend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _NoHints:
    """A kernel's Scheduler when nobody in this process runs the work it hints at."""

    async def wake(self, command: WakeCommand, at: datetime) -> None:
        return None


class _NoSink:
    """An EventSink for a kernel whose events nobody in this process wants."""

    async def publish(self, event: Event) -> None:
        return None


def _sqlite_file(url: URL) -> Path | None:
    """The file of a SQLite URL (None for PostgreSQL, in-memory and `uri=true` databases)."""
    if url.get_backend_name() != "sqlite" or is_memory_sqlite(url) or url.query.get("uri"):
        return None
    return Path(url.database or "").expanduser().absolute()


async def _has_no_stagewise_table(db: Database) -> bool:
    def tables(connection: Connection) -> set[str]:
        return set(inspect(connection).get_table_names())

    async with db.single(write=False) as link:
        present = await link.run_sync(tables)
    return not present & {VERSION_TABLE, *(t.name for t in TABLES)}


def _check_sqlite_directory(url: URL) -> None:
    # Refused here rather than by the driver: aiosqlite leaves a thread behind on a failed
    # open, and "unable to open database file" does not say why.
    file = _sqlite_file(url)
    if file is None:
        return
    folder = file.parent
    if not folder.is_dir():
        raise PersistenceError(
            f"cannot open the database at {display_url(url)}: "
            f"directory {str(folder)!r} does not exist"
        )


async def upgrade(url: str | URL) -> str:
    """Upgrade the database at `url` to this code's schema revision; returns it.

    What `stagewise db upgrade` runs.
    """
    backend = await SqlBackend.connect(url, migrate=True)
    try:
        revision = await backend.schema_revision()
    finally:
        await backend.close()
    return revision or ""
