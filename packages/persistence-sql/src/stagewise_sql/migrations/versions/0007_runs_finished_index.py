"""An index of finished runs by when they finished, for purging them oldest first.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    where = sa.text("finished_at IS NOT NULL")
    op.create_index(
        "ix_stagewise_runs_finished",
        "stagewise_runs",
        ["finished_at", "run_id"],
        postgresql_where=where,
        sqlite_where=where,
    )


def downgrade() -> None:
    op.drop_index("ix_stagewise_runs_finished", table_name="stagewise_runs")
