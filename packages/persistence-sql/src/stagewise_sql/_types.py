"""The column types of the schema: times kept in UTC and returned aware, keys compared by
bytes on PostgreSQL (collation "C"), JSON as JSONB there. Re-exported by `_schema`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

from stagewise._errors import InvalidInputError


def utc(value: datetime | None) -> datetime | None:
    """`value` in UTC (None stays None). Raises `InvalidInputError` for a naive datetime."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise InvalidInputError(f"naive datetime {value.isoformat()} (times must be aware)")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, stored in UTC and always returned timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        value = utc(value)
        if value is None:
            return None
        # SQLite stores text without an offset; every value is UTC, so it compares right.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value if value.tzinfo is UTC else value.astimezone(UTC)


def key_type() -> TypeEngine[str]:
    return Text().with_variant(Text(collation="C"), "postgresql")


def json_type() -> TypeEngine[Any]:
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
