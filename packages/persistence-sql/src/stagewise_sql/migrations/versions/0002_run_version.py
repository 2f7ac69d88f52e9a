"""Runs carry a version: bumped by every transaction that changes a run or its stages, and
checked by every write (optimistic concurrency, under the row locks).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing runs start at version 1, as a new run does.
    op.add_column(
        "stagewise_runs",
        sa.Column("version", sa.Integer(), nullable=False, server_default=sa.text("1")),
    )


def downgrade() -> None:
    with op.batch_alter_table("stagewise_runs") as batch:
        batch.drop_column("version")
