"""The runs' streams (`ctx.write_stream`): `stagewise_stream_items`, each item numbered in
order per (run, key), the close last; deleted with the run.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)
KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "stagewise_stream_items",
        sa.Column("run_id", KEY, nullable=False),
        sa.Column("key", KEY, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("value", JSON, nullable=True),
        sa.Column("stage_id", KEY, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("written_at", TIME, nullable=False),
        sa.Column("closed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", "seq", name="pk_stagewise_stream_items"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["stagewise_runs.run_id"],
            ondelete="CASCADE",
            deferrable=True,
            initially="DEFERRED",
            name="fk_stagewise_stream_items_run_id_stagewise_runs",
        ),
    )


def downgrade() -> None:
    op.drop_table("stagewise_stream_items")
