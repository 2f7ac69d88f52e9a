"""Runs and their jobs record the workflow version they are pinned to (NULL for runs made
before versions were recorded: the newest registered version drives those).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


def upgrade() -> None:
    op.add_column("stagewise_runs", sa.Column("workflow_version", KEY, nullable=True))
    op.add_column("stagewise_jobs", sa.Column("workflow_version", KEY, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stagewise_jobs") as batch:
        batch.drop_column("workflow_version")
    with op.batch_alter_table("stagewise_runs") as batch:
        batch.drop_column("workflow_version")
