"""The values runs publish (`ctx.set_event`): `stagewise_run_values`, the latest value
under each key of a run, deleted with the run.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)
KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "stagewise_run_values",
        sa.Column("run_id", KEY, nullable=False),
        sa.Column("key", KEY, nullable=False),
        sa.Column("value", JSON, nullable=True),
        sa.Column("stage_id", KEY, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("set_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", name="pk_stagewise_run_values"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["stagewise_runs.run_id"],
            ondelete="CASCADE",
            deferrable=True,
            initially="DEFERRED",
            name="fk_stagewise_run_values_run_id_stagewise_runs",
        ),
    )


def downgrade() -> None:
    op.drop_table("stagewise_run_values")
