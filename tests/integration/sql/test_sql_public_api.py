"""The public surface of stagewise_sql, pinned: changing it is a decision, not an accident."""

from __future__ import annotations

import stagewise_sql


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(stagewise_sql.__all__) == [
        "CHANNEL",
        "Counts",
        "DatabaseClock",
        "DatabaseUnavailableError",
        "DuplicateRecordError",
        "InvalidDatabaseUrlError",
        "MIGRATIONS",
        "SchemaMissingError",
        "SqlBackend",
        "SqlBlobStore",
        "SqlJobTransport",
        "SqlPersistence",
        "SqlSettings",
        "SqlTransaction",
        "VERSION_TABLE",
        "count_statements",
        "head_revision",
        "metadata",
        "render_item",
        "upgrade",
    ]
    for name in stagewise_sql.__all__:
        assert hasattr(stagewise_sql, name)


def test_every_field_of_every_record_has_a_column() -> None:
    # A field the kernel adds to a record must be stored, or it silently comes back empty.
    from dataclasses import fields

    from stagewise._records import (
        Delivery,
        EventRecord,
        IdempotencyRecord,
        JobMessage,
        LogRecord,
        RunRecord,
        StageRecord,
    )
    from stagewise_sql import _schema

    pairs = [
        (RunRecord, _schema.runs, set()),
        (StageRecord, _schema.stages, set()),
        (EventRecord, _schema.events, set()),
        (Delivery, _schema.deliveries, set()),
        (IdempotencyRecord, _schema.idempotency, set()),
        (LogRecord, _schema.logs, {"id"}),
        (JobMessage, _schema.jobs, {"seq", "worker_id"}),
    ]
    for record, table, extra_columns in pairs:
        record_fields = {f.name for f in fields(record)}
        assert record_fields == {c.name for c in table.columns} - extra_columns, record.__name__
