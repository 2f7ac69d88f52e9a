"""Runs carry a deadline: when they must have finished (`RunCreate.deadline`, a workflow's
`timeout`); maintenance fails a run still unfinished then. Existing runs have none (NULL). A
partial index over the unfinished runs that have one serves the reaper's two reads.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)
WHERE = "deadline IS NOT NULL AND status IN ('PENDING', 'RUNNING')"


def upgrade() -> None:
    op.add_column("stagewise_runs", sa.Column("deadline", TIME, nullable=True))
    op.create_index(
        "ix_stagewise_runs_deadline",
        "stagewise_runs",
        ["deadline", "run_id"],
        postgresql_where=sa.text(WHERE),
        sqlite_where=sa.text(WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_stagewise_runs_deadline", table_name="stagewise_runs")
    with op.batch_alter_table("stagewise_runs") as batch:
        batch.drop_column("deadline")
