"""The fleet's workers: each one's last beat, what it runs, and since when it has beaten
without a gap (to take over the attempts of one that is gone).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "stagewise_workers",
        sa.Column("worker_id", KEY, nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("last_seen_at", TIME, nullable=False),
        sa.Column("beat_interval", sa.Float(), nullable=False),
        sa.Column("streak_since", TIME, nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("workflows", JSON, nullable=False),
        sa.Column("software", sa.Text(), nullable=False),
        sa.Column("stopped_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("worker_id", name="pk_stagewise_workers"),
    )


def downgrade() -> None:
    op.drop_table("stagewise_workers")
