"""The initial stagewise schema: runs, stages, outbox, idempotency, logs, jobs, blobs.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types as they are today, spelled out: a revision never changes with the code.
KEY = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIME = sa.DateTime(timezone=True)
STATUS = sa.String(16)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def _fk_to_run(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["run_id"],
        ["stagewise_runs.run_id"],
        ondelete="CASCADE",
        deferrable=True,
        initially="DEFERRED",
        name=f"fk_{table}_run_id_stagewise_runs",
    )


def upgrade() -> None:
    op.create_table(
        "stagewise_runs",
        sa.Column("run_id", KEY, nullable=False),
        sa.Column("workflow_id", KEY, nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("current_group", sa.Integer(), nullable=False),
        sa.Column("event_seq", sa.Integer(), nullable=False),
        sa.Column("input", JSON, nullable=True),
        sa.Column("config", JSON, nullable=False),
        sa.Column("output", JSON, nullable=True),
        sa.Column("output_ref", sa.Text(), nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("run_id", name="pk_stagewise_runs"),
    )
    op.create_index(
        "ix_stagewise_runs_pending",
        "stagewise_runs",
        [sa.text("priority DESC"), "created_at", "run_id"],
        **_partial("status = 'PENDING'"),
    )
    op.create_index("ix_stagewise_runs_created", "stagewise_runs", ["created_at", "run_id"])
    op.create_index("ix_stagewise_runs_status_created", "stagewise_runs", ["status", "created_at"])
    op.create_index(
        "ix_stagewise_runs_workflow_created", "stagewise_runs", ["workflow_id", "created_at"]
    )

    op.create_table(
        "stagewise_stages",
        sa.Column("run_id", KEY, nullable=False),
        sa.Column("stage_id", KEY, nullable=False),
        sa.Column("group_index", sa.Integer(), nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=True),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", TIME, nullable=True),
        sa.Column("due_at", TIME, nullable=True),
        sa.Column("enqueued_at", TIME, nullable=True),
        sa.Column("suspend_state", JSON, nullable=True),
        sa.Column("suspend_deadline", TIME, nullable=True),
        sa.Column("output", JSON, nullable=True),
        sa.Column("output_ref", sa.Text(), nullable=True),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("artifacts", JSON, nullable=False),
        sa.Column("error", JSON, nullable=True),
        sa.Column("progress", sa.Float(), nullable=True),
        sa.Column("progress_message", sa.Text(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("run_id", "stage_id", name="pk_stagewise_stages"),
        _fk_to_run("stagewise_stages"),
    )
    op.create_index(
        "ix_stagewise_stages_due_poll",
        "stagewise_stages",
        ["due_at"],
        **_partial("status = 'SUSPENDED'"),
    )
    op.create_index(
        "ix_stagewise_stages_lease",
        "stagewise_stages",
        ["lease_expires_at"],
        **_partial("status = 'RUNNING'"),
    )
    op.create_index(
        "ix_stagewise_stages_worker",
        "stagewise_stages",
        ["worker_id"],
        **_partial("status = 'RUNNING'"),
    )
    op.create_index(
        "ix_stagewise_stages_unstarted",
        "stagewise_stages",
        ["enqueued_at"],
        **_partial("status IN ('PENDING', 'RETRYING')"),
    )

    op.create_table(
        "stagewise_events",
        sa.Column("event_id", KEY, nullable=False),
        sa.Column("run_id", KEY, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("occurred_at", TIME, nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_stagewise_events"),
        sa.UniqueConstraint("run_id", "seq", name="uq_stagewise_events_run_id_seq"),
        _fk_to_run("stagewise_events"),
    )

    op.create_table(
        "stagewise_deliveries",
        sa.Column("event_id", KEY, nullable=False),
        sa.Column("consumer", KEY, nullable=False),
        sa.Column("run_id", KEY, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIME, nullable=True),
        sa.Column("claimed_by", sa.Text(), nullable=True),
        sa.Column("claimed_until", TIME, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("event_id", "consumer", name="pk_stagewise_deliveries"),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["stagewise_events.event_id"],
            ondelete="CASCADE",
            deferrable=True,
            initially="DEFERRED",
            name="fk_stagewise_deliveries_event_id_stagewise_events",
        ),
    )
    op.create_index(
        "ix_stagewise_deliveries_status_group",
        "stagewise_deliveries",
        ["status", "consumer", "run_id", "seq"],
    )

    op.create_table(
        "stagewise_idempotency",
        sa.Column("scope", KEY, nullable=False),
        sa.Column("key", KEY, nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("state", STATUS, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("result", JSON, nullable=True),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_stagewise_idempotency"),
    )
    op.create_index(
        "ix_stagewise_idempotency_expires",
        "stagewise_idempotency",
        ["expires_at"],
        **_partial("state = 'completed'"),
    )

    op.create_table(
        "stagewise_logs",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("run_id", KEY, nullable=False),
        sa.Column("stage_id", KEY, nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("level", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("fields", JSON, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stagewise_logs"),
        _fk_to_run("stagewise_logs"),
    )
    op.create_index("ix_stagewise_logs_run", "stagewise_logs", ["run_id", "id"])

    op.create_table(
        "stagewise_jobs",
        sa.Column("seq", BIGID, autoincrement=True, nullable=False),
        sa.Column("job_id", KEY, nullable=False),
        sa.Column("run_id", KEY, nullable=False),
        sa.Column("workflow_id", KEY, nullable=False),
        sa.Column("stage_id", KEY, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("available_at", TIME, nullable=False),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_stagewise_jobs"),
        sa.UniqueConstraint("job_id", name="uq_stagewise_jobs_job_id"),
    )
    op.create_index(
        "ix_stagewise_jobs_ready",
        "stagewise_jobs",
        [sa.text("priority DESC"), "available_at", "seq"],
    )
    op.create_index("ix_stagewise_jobs_run", "stagewise_jobs", ["run_id"])
    op.create_index(
        "ix_stagewise_jobs_leased",
        "stagewise_jobs",
        ["lease_expires_at"],
        **_partial("lease_expires_at IS NOT NULL"),
    )

    op.create_table(
        "stagewise_blobs",
        sa.Column("key", KEY, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_stagewise_blobs"),
    )


def downgrade() -> None:
    for table in (
        "stagewise_blobs",
        "stagewise_jobs",
        "stagewise_logs",
        "stagewise_idempotency",
        "stagewise_deliveries",
        "stagewise_events",
        "stagewise_stages",
        "stagewise_runs",
    ):
        op.drop_table(table)
