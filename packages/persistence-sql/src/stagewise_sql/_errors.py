"""Driver errors, translated at the edge into stagewise errors.

Nothing from `sqlalchemy.exc`, asyncpg or sqlite3 leaves `stagewise_sql`: every call into
the database goes through `translate`, which keeps the driver exception as `__cause__` and
gives the caller one of the kernel's error branches:

* `TransientError` - may go away by itself: lost connection, serialization failure,
  deadlock, lock timeout, `database is locked`, a server starting up or shutting down.
* `SchemaMissingError` / `SchemaVersionError` - the schema is absent or not ours.
* `DuplicateRecordError` - a unique key is taken (a conflict).
* `InvalidInputError` - the database refused a value (out of range, bad encoding).
* `PersistenceError` - anything else; not worth retrying.
"""

from __future__ import annotations

import socket

from sqlalchemy import exc as sa_exc

from stagewise._errors import (
    DuplicateRecordError,
    InvalidInputError,
    PersistenceError,
    SchemaVersionError,
    StagewiseError,
    TransactionConflictError,
    TransientError,
)

UPGRADE_HINT = "run `stagewise db upgrade`, or connect with SqlBackend.connect(url, migrate=True)"


class InvalidDatabaseUrlError(InvalidInputError):
    """The database URL is malformed or names a database stagewise cannot use."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"invalid database URL {url!r}: {reason}")
        self.url = url
        self.reason = reason


class DatabaseUnavailableError(TransientError):
    """The database server cannot be reached (refused, unknown host, timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot connect to the database at {url}: {reason}")
        self.url = url
        self.reason = reason


class SchemaMissingError(SchemaVersionError):
    """A stagewise table does not exist: the database was never migrated."""

    def __init__(self, table: str, url: str) -> None:
        super().__init__(f"table {table!r} does not exist in the database at {url}; {UPGRADE_HINT}")
        self.table = table
        self.url = url


class DatabaseNotFoundError(SchemaMissingError):
    """There is no stagewise database at the URL, and nothing may create one
    (`SqlBackend.connect(url, migrate=False)`): a SQLite file that does not exist, or a
    database without any stagewise table."""

    def __init__(self, url: str, table: str, reason: str) -> None:
        SchemaVersionError.__init__(
            self, f"no stagewise database at {url} ({reason}); {UPGRADE_HINT}"
        )
        self.table = table
        """The first of the missing tables (all of them are)."""
        self.url = url
        self.reason = reason


# PostgreSQL SQLSTATEs (and classes) that mean "try again".
_PG_TRANSIENT = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        "53300",  # too_many_connections
        "57014",  # query_canceled (statement_timeout)
    }
)
_PG_TRANSIENT_CLASSES = ("08",)  # connection_exception
# Of those, the ones where the server aborted one transaction for another: try it again.
_PG_CONFLICT = frozenset({"40001", "40P01"})
# Of those, the ones that mean "the server cannot be used now" (from the driver at connect).
_PG_UNAVAILABLE = frozenset({"57P01", "57P02", "57P03", "53300"})
_PG_DATA_CLASS = "22"  # data_exception
_PG_UNIQUE = "23505"
_PG_UNDEFINED_TABLE = "42P01"

_SQLITE_TRANSIENT = ("database is locked", "database is busy", "database table is locked")


def _sqlstate(orig: BaseException | None) -> str | None:
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def is_disconnect(error: BaseException) -> bool:
    """Whether `error` (a SQLAlchemy DBAPIError) means the connection was lost."""
    return isinstance(error, sa_exc.DBAPIError) and bool(error.connection_invalidated)


def translate(error: Exception, *, url: str) -> Exception:
    """The stagewise error for a driver or SQLAlchemy exception (`raise ... from error`).

    Anything that is not a database error comes back as it is. `url` is the masked
    database URL, for messages.
    """
    if isinstance(error, StagewiseError):
        return error
    if isinstance(error, sa_exc.StatementError) and isinstance(error.orig, StagewiseError):
        return error.orig  # raised by our own bind processing (a naive datetime)
    if isinstance(error, sa_exc.DBAPIError):
        return _translate_dbapi(error, url)
    if isinstance(error, (ConnectionError, socket.gaierror, TimeoutError)):
        return DatabaseUnavailableError(url, _first_line(error) or type(error).__name__)
    if isinstance(error, OSError):
        return DatabaseUnavailableError(url, _first_line(error))
    if isinstance(error, sa_exc.ArgumentError):
        return InvalidDatabaseUrlError(url, _first_line(error))
    if isinstance(error, sa_exc.SQLAlchemyError):
        return PersistenceError(f"database error at {url}: {_first_line(error)}")
    # asyncpg raises its own exceptions where SQLAlchemy does not wrap them: at connect,
    # and for the statements sent on the driver directly (`_pg`).
    module = type(error).__module__
    if module.startswith("asyncpg"):
        return _translate_asyncpg(error, url)
    if module.startswith(("sqlite3", "aiosqlite")):  # SQLite's hot path (`_lite`)
        return _by_message(type(error).__name__, _first_line(error), url)
    return error  # not a database error: let it through untouched


def _translate_asyncpg(error: Exception, url: str) -> StagewiseError:
    code = _sqlstate(error)
    message = _first_line(error)
    if code is not None and (code.startswith(_PG_TRANSIENT_CLASSES) or code in _PG_UNAVAILABLE):
        return DatabaseUnavailableError(url, message)
    if code is None and (
        (type(error).__name__ == "InterfaceError" and "closed" in message)
        # the protocol lost track of the connection (the server ended it under us)
        or type(error).__name__ == "InternalClientError"
    ):
        return TransientError(f"lost the connection to the database at {url}: {message}")
    if type(error).__name__ in (
        "InvalidCatalogNameError",
        "InvalidAuthorizationSpecificationError",
    ):
        return PersistenceError(f"cannot use the database at {url}: {message}")
    if code is not None:
        return _by_code(code, message, url)
    return PersistenceError(f"database error at {url}: {message}")


def _by_code(code: str, message: str, url: str) -> StagewiseError:
    if code in _PG_CONFLICT:
        return TransactionConflictError(f"transaction conflict at {url}: {message} [{code}]")
    if code in _PG_TRANSIENT or code.startswith(_PG_TRANSIENT_CLASSES):
        return TransientError(f"transient database error at {url}: {message} [{code}]")
    if code == _PG_UNDEFINED_TABLE:
        return PersistenceError(f"{message} in the database at {url}; {UPGRADE_HINT}")
    if code == _PG_UNIQUE:
        return DuplicateRecordError(f"duplicate key: {message}")
    if code.startswith(_PG_DATA_CLASS):
        return InvalidInputError(f"the database refused a value: {message} [{code}]")
    return PersistenceError(f"database error at {url}: {message} [{code}]")


def _translate_dbapi(error: sa_exc.DBAPIError, url: str) -> StagewiseError:
    orig = error.orig
    message = _first_line(orig) if orig is not None else _first_line(error)
    code = _sqlstate(orig)
    if error.connection_invalidated:
        return TransientError(f"lost the connection to the database at {url}: {message}")
    if code is not None:
        return _by_code(code, message, url)
    if isinstance(error, sa_exc.OperationalError) and isinstance(orig, OSError):
        return DatabaseUnavailableError(url, message)
    return _by_message(type(error).__name__, message, url)


def _by_message(kind: str, message: str, url: str) -> StagewiseError:
    """SQLite's errors (and any other without a SQLSTATE), by their DBAPI class name (`kind`,
    the same for SQLAlchemy's wrappers and sqlite3's own) and message."""
    lowered = message.lower()
    if any(marker in lowered for marker in _SQLITE_TRANSIENT):
        return TransientError(f"transient database error at {url}: {message}")
    if "no such table" in lowered:
        return PersistenceError(f"{message} in the database at {url}; {UPGRADE_HINT}")
    if kind == "IntegrityError" and "unique" in lowered:
        return DuplicateRecordError(f"duplicate key: {message}")
    if "unable to open database file" in lowered:
        return PersistenceError(f"cannot open the database at {url}: {message}")
    if kind in ("InterfaceError", "ProgrammingError") and "closed" in lowered:
        return TransientError(f"lost the connection to the database at {url}: {message}")
    return PersistenceError(f"database error at {url}: {message}")
