"""Signals: a run's mailbox (`stagewise_signals`), and the run's counter of signals sent.

Existing runs have sent none (`signal_seq` 0). A partial index over the signals not yet
consumed serves a wait looking for the oldest one of its topic; a partial unique index
makes an idempotency key name at most one signal of a run.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIME = sa.DateTime(timezone=True)
KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.add_column(
        "stagewise_runs",
        sa.Column("signal_seq", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "stagewise_signals",
        sa.Column("run_id", KEY, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("signal_id", KEY, nullable=False),
        sa.Column("topic", KEY, nullable=False),
        sa.Column("payload", JSON, nullable=True),
        sa.Column("idempotency_key", KEY, nullable=True),
        sa.Column("sent_at", TIME, nullable=False),
        sa.Column("consumed_by", KEY, nullable=True),
        sa.Column("consumed_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("run_id", "seq", name="pk_stagewise_signals"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["stagewise_runs.run_id"],
            ondelete="CASCADE",
            deferrable=True,
            initially="DEFERRED",
            name="fk_stagewise_signals_run_id_stagewise_runs",
        ),
    )
    pending = sa.text("consumed_by IS NULL")
    op.create_index(
        "ix_stagewise_signals_pending",
        "stagewise_signals",
        ["run_id", "topic", "seq"],
        postgresql_where=pending,
        sqlite_where=pending,
    )
    keyed = sa.text("idempotency_key IS NOT NULL")
    op.create_index(
        "ux_stagewise_signals_key",
        "stagewise_signals",
        ["run_id", "idempotency_key"],
        unique=True,
        postgresql_where=keyed,
        sqlite_where=keyed,
    )


def downgrade() -> None:
    op.drop_table("stagewise_signals")
    with op.batch_alter_table("stagewise_runs") as batch:
        batch.drop_column("signal_seq")
