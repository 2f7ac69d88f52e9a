"""The public surface of stagewise_sql, pinned: changing it is a decision, not an accident."""

from __future__ import annotations

import stagewise_sql


def test_the_public_names_are_exactly_these() -> None:
    assert sorted(stagewise_sql.__all__) == [
        "CHANNEL",
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
        "head_revision",
        "metadata",
        "render_item",
        "upgrade",
    ]
    for name in stagewise_sql.__all__:
        assert hasattr(stagewise_sql, name)
