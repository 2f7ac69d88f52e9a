"""Attempt numbers are never used twice: they go on across a drain's release and a rerun.
A stage's `uncounted` keeps those out of the retry policy's count; a run's
`attempts_before` keeps, after a rerun, the last number of each stage it reset or removed.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out as in 0001: a revision never changes with the code.
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    # Stages written before: every attempt they had counted, as it did then.
    op.add_column(
        "stagewise_stages",
        sa.Column("uncounted", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column("stagewise_runs", sa.Column("attempts_before", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stagewise_stages") as batch:
        batch.drop_column("uncounted")
    with op.batch_alter_table("stagewise_runs") as batch:
        batch.drop_column("attempts_before")
