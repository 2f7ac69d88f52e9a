"""Runs carry metadata: labels given at creation, to find runs by (`RunFilter.metadata`).

Existing runs have none (`{}`). On PostgreSQL a GIN index (jsonb_path_ops) over the labelled
runs serves containment (`metadata @> ...`); on SQLite the same index holds no row (see
`_schema`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.add_column(
        "stagewise_runs",
        sa.Column("metadata", JSON, nullable=False, server_default=sa.text("'{}'")),
    )
    op.create_index(
        "ix_stagewise_runs_metadata",
        "stagewise_runs",
        ["metadata"],
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
        postgresql_where=sa.text("metadata <> '{}'::jsonb"),
        sqlite_where=sa.text("0"),
    )


def downgrade() -> None:
    op.drop_index("ix_stagewise_runs_metadata", table_name="stagewise_runs")
    with op.batch_alter_table("stagewise_runs") as batch:
        batch.drop_column("metadata")
