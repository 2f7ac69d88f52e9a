"""Every table stagewise keeps, in one SQLAlchemy Core `MetaData`.

The tables hold the kernel's records field by field (see `stagewise._records`). Conventions:

* Ids and keys are `KEY`: text compared byte-wise (`COLLATE "C"` on PostgreSQL, SQLite's
  default BINARY), so `ORDER BY` sorts exactly as Python sorts strings and the adapters
  return rows in the same order as the in-memory reference.
* Times are `UtcDateTime`: stored in UTC, always returned timezone-aware (SQLite keeps them
  as fixed-width text, which compares in time order).
* JSON-valued fields are JSONB on PostgreSQL and JSON text on SQLite; Python `None` is SQL
  NULL.
* Partial indexes serve the hot queries: pending runs by priority and age, due jobs, due
  polls, expired leases, pending deliveries per (consumer, run).

The Alembic revisions (`migrations/versions/`) create exactly this schema; a test compares
the two.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from stagewise_sql._types import UtcDateTime as UtcDateTime
from stagewise_sql._types import json_type, key_type
from stagewise_sql._types import utc as utc

VERSION_TABLE = "stagewise_alembic_version"
"""Alembic's version table for our migrations (kept apart from the user's own)."""

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)
"""The stagewise schema, for `target_metadata` in a user's own Alembic environment."""


KEY = key_type()
JSON_VALUE = json_type()
STATUS = String(16)


def _time(name: str, nullable: bool = True) -> Column[datetime]:
    return Column(name, UtcDateTime(), nullable=nullable)


def _fk_to_run(table: str) -> ForeignKeyConstraint:
    # Deferred, so a transaction may write a run's rows in any order.
    return ForeignKeyConstraint(
        ["run_id"],
        ["stagewise_runs.run_id"],
        ondelete="CASCADE",
        deferrable=True,
        initially="DEFERRED",
        name=f"fk_{table}_run_id_stagewise_runs",
    )


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": text(where), "sqlite_where": text(where)}


runs = Table(
    "stagewise_runs",
    metadata,
    Column("run_id", KEY, nullable=False),
    Column("workflow_id", KEY, nullable=False),
    Column("status", STATUS, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("current_group", Integer, nullable=False),
    Column("event_seq", Integer, nullable=False),
    Column("input", JSON_VALUE, nullable=True),
    Column("config", JSON_VALUE, nullable=False),
    Column("output", JSON_VALUE, nullable=True),
    Column("output_ref", Text, nullable=True),
    Column("error", JSON_VALUE, nullable=True),
    Column("idempotency_key", Text, nullable=True),
    _time("created_at", nullable=False),
    _time("updated_at", nullable=False),
    _time("started_at"),
    _time("finished_at"),
    # Bumped by every transaction that changes the run or its stages (see `RunWrite`).
    Column("version", Integer, nullable=False, server_default=text("1")),
    # The workflow version the run is pinned to (NULL: created before versions were).
    Column("workflow_version", KEY, nullable=True),
    # After a rerun: the last attempt number of each stage it reset (NULL: none).
    Column("attempts_before", JSON_VALUE, nullable=True),
    # Labels given at creation, to find runs by ({}: none; existing runs have none).
    Column("metadata", JSON_VALUE, nullable=False, server_default=text("'{}'")),
    # When the run must have finished (NULL: no deadline).
    _time("deadline"),
    # The last number handed to a signal sent to the run.
    Column("signal_seq", Integer, nullable=False, server_default=text("0")),
    PrimaryKeyConstraint("run_id"),
)
Index(
    "ix_stagewise_runs_pending",
    runs.c.priority.desc(),
    runs.c.created_at,
    runs.c.run_id,
    **_partial("status = 'PENDING'"),
)
Index("ix_stagewise_runs_created", runs.c.created_at, runs.c.run_id)
# Serves purging (`RunStore.finished_before`): finished runs, oldest first.
Index(
    "ix_stagewise_runs_finished",
    runs.c.finished_at,
    runs.c.run_id,
    **_partial("finished_at IS NOT NULL"),
)
# Serves deadlines (`RunStore.past_deadline`, `next_deadline`): unfinished runs that have one.
ACTIVE_WITH_DEADLINE = "deadline IS NOT NULL AND status IN ('PENDING', 'RUNNING')"
Index(
    "ix_stagewise_runs_deadline", runs.c.deadline, runs.c.run_id, **_partial(ACTIVE_WITH_DEADLINE)
)
Index("ix_stagewise_runs_status_created", runs.c.status, runs.c.created_at)
Index("ix_stagewise_runs_workflow_created", runs.c.workflow_id, runs.c.created_at)
# PostgreSQL: the runs that have labels, for `metadata @> ...` (jsonb_path_ops: containment
# only, a third of the default's size); unlabelled runs cost it nothing. SQLite has no index
# for arbitrary JSON keys: its predicate there is false, so the index holds no row and costs
# no write (it exists so that one schema module describes both databases).
Index(
    "ix_stagewise_runs_metadata",
    runs.c.metadata,
    postgresql_using="gin",
    postgresql_ops={"metadata": "jsonb_path_ops"},
    postgresql_where=text("metadata <> '{}'::jsonb"),
    sqlite_where=text("0"),
)

stages = Table(
    "stagewise_stages",
    metadata,
    Column("run_id", KEY, nullable=False),
    Column("stage_id", KEY, nullable=False),
    Column("group_index", Integer, nullable=False),
    Column("status", STATUS, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("uncounted", Integer, nullable=False, server_default=text("0")),
    Column("job_id", Text, nullable=True),
    Column("worker_id", Text, nullable=True),
    _time("lease_expires_at"),
    _time("due_at"),
    _time("enqueued_at"),
    Column("suspend_state", JSON_VALUE, nullable=True),
    _time("suspend_deadline"),
    Column("output", JSON_VALUE, nullable=True),
    Column("output_ref", Text, nullable=True),
    Column("metrics", JSON_VALUE, nullable=False),
    Column("artifacts", JSON_VALUE, nullable=False),
    Column("error", JSON_VALUE, nullable=True),
    Column("progress", Float, nullable=True),
    Column("progress_message", Text, nullable=True),
    _time("created_at", nullable=False),
    _time("updated_at", nullable=False),
    _time("started_at"),
    _time("finished_at"),
    PrimaryKeyConstraint("run_id", "stage_id"),
    _fk_to_run("stagewise_stages"),
)
Index("ix_stagewise_stages_due_poll", stages.c.due_at, **_partial("status = 'SUSPENDED'"))
Index("ix_stagewise_stages_lease", stages.c.lease_expires_at, **_partial("status = 'RUNNING'"))
Index("ix_stagewise_stages_worker", stages.c.worker_id, **_partial("status = 'RUNNING'"))
Index(
    "ix_stagewise_stages_unstarted",
    stages.c.enqueued_at,
    **_partial("status IN ('PENDING', 'RETRYING')"),
)

events = Table(
    "stagewise_events",
    metadata,
    Column("event_id", KEY, nullable=False),
    Column("run_id", KEY, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("type", Text, nullable=False),
    _time("occurred_at", nullable=False),
    Column("payload", JSON_VALUE, nullable=False),
    PrimaryKeyConstraint("event_id"),
    UniqueConstraint("run_id", "seq"),
    _fk_to_run("stagewise_events"),
)

deliveries = Table(
    "stagewise_deliveries",
    metadata,
    Column("event_id", KEY, nullable=False),
    Column("consumer", KEY, nullable=False),
    Column("run_id", KEY, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("status", STATUS, nullable=False),
    Column("attempts", Integer, nullable=False),
    _time("next_attempt_at"),
    Column("claimed_by", Text, nullable=True),
    _time("claimed_until"),
    Column("last_error", Text, nullable=True),
    PrimaryKeyConstraint("event_id", "consumer"),
    ForeignKeyConstraint(
        ["event_id"],
        ["stagewise_events.event_id"],
        ondelete="CASCADE",
        deferrable=True,
        initially="DEFERRED",
        name="fk_stagewise_deliveries_event_id_stagewise_events",
    ),
)
# Serves claim (pending groups in order) and dead (the dead-letter listing).
Index(
    "ix_stagewise_deliveries_status_group",
    deliveries.c.status,
    deliveries.c.consumer,
    deliveries.c.run_id,
    deliveries.c.seq,
)

idempotency = Table(
    "stagewise_idempotency",
    metadata,
    Column("scope", KEY, nullable=False),
    Column("key", KEY, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("state", STATUS, nullable=False),
    _time("created_at", nullable=False),
    _time("expires_at", nullable=False),
    Column("result", JSON_VALUE, nullable=True),
    PrimaryKeyConstraint("scope", "key"),
)
Index(
    "ix_stagewise_idempotency_expires",
    idempotency.c.expires_at,
    **_partial("state = 'completed'"),
)

logs = Table(
    "stagewise_logs",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), autoincrement=True),
    Column("run_id", KEY, nullable=False),
    Column("stage_id", KEY, nullable=True),
    Column("attempt", Integer, nullable=True),
    Column("level", Text, nullable=False),
    Column("message", Text, nullable=False),
    Column("fields", JSON_VALUE, nullable=False),
    _time("at", nullable=False),
    PrimaryKeyConstraint("id"),
    _fk_to_run("stagewise_logs"),
)
Index("ix_stagewise_logs_run", logs.c.run_id, logs.c.id)

# A run's mailbox: signals by their number within the run; a wait takes the oldest of its
# topic still unconsumed (the partial index), and a key names at most one of a run's.
signals = Table(
    "stagewise_signals",
    metadata,
    Column("run_id", KEY, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("signal_id", KEY, nullable=False),
    Column("topic", KEY, nullable=False),
    Column("payload", JSON_VALUE, nullable=True),
    Column("idempotency_key", KEY, nullable=True),
    _time("sent_at", nullable=False),
    Column("consumed_by", KEY, nullable=True),
    _time("consumed_at"),
    PrimaryKeyConstraint("run_id", "seq"),
    _fk_to_run("stagewise_signals"),
)
Index(
    "ix_stagewise_signals_pending",
    signals.c.run_id,
    signals.c.topic,
    signals.c.seq,
    **_partial("consumed_by IS NULL"),
)
Index(
    "ux_stagewise_signals_key",
    signals.c.run_id,
    signals.c.idempotency_key,
    unique=True,
    **_partial("idempotency_key IS NOT NULL"),
)

# The values runs publish (`ctx.set_event`): the latest under each key of a run.
run_values = Table(
    "stagewise_run_values",
    metadata,
    Column("run_id", KEY, nullable=False),
    Column("key", KEY, nullable=False),
    Column("value", JSON_VALUE, nullable=True),
    Column("stage_id", KEY, nullable=False),
    Column("attempt", Integer, nullable=False),
    _time("set_at", nullable=False),
    PrimaryKeyConstraint("run_id", "key"),
    _fk_to_run("stagewise_run_values"),
)

# The runs' streams (`ctx.write_stream`): items in order per (run, key), the close last.
stream_items = Table(
    "stagewise_stream_items",
    metadata,
    Column("run_id", KEY, nullable=False),
    Column("key", KEY, nullable=False),
    Column("seq", BigInteger, nullable=False),  # the item's offset ("offset" is reserved)
    Column("value", JSON_VALUE, nullable=True),
    Column("stage_id", KEY, nullable=False),
    Column("attempt", Integer, nullable=False),
    _time("written_at", nullable=False),
    Column("closed", Boolean, nullable=False),
    PrimaryKeyConstraint("run_id", "key", "seq"),
    _fk_to_run("stagewise_stream_items"),
)

jobs = Table(
    "stagewise_jobs",
    metadata,
    # Enqueue order: the last tie-break of dequeue order, as in the reference queue.
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), autoincrement=True),
    Column("job_id", KEY, nullable=False),
    Column("run_id", KEY, nullable=False),
    Column("workflow_id", KEY, nullable=False),
    Column("stage_id", KEY, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("priority", Integer, nullable=False),
    _time("available_at", nullable=False),
    Column("worker_id", Text, nullable=True),
    _time("lease_expires_at"),
    Column("workflow_version", KEY, nullable=True),
    PrimaryKeyConstraint("seq"),
    UniqueConstraint("job_id"),
)
Index("ix_stagewise_jobs_ready", jobs.c.priority.desc(), jobs.c.available_at, jobs.c.seq)
Index("ix_stagewise_jobs_run", jobs.c.run_id)
Index(
    "ix_stagewise_jobs_leased",
    jobs.c.lease_expires_at,
    **_partial("lease_expires_at IS NOT NULL"),
)

workers = Table(
    "stagewise_workers",
    metadata,
    Column("worker_id", KEY, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    _time("started_at", nullable=False),
    _time("last_seen_at", nullable=False),
    Column("beat_interval", Float, nullable=False),
    _time("streak_since", nullable=False),
    Column("slots", Integer, nullable=False),
    Column("workflows", JSON_VALUE, nullable=False),
    Column("software", Text, nullable=False),
    _time("stopped_at"),
    PrimaryKeyConstraint("worker_id"),
)

blobs = Table(
    "stagewise_blobs",
    metadata,
    Column("key", KEY, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("key"),
)

TABLES = (
    runs,
    stages,
    events,
    deliveries,
    idempotency,
    logs,
    signals,
    run_values,
    stream_items,
    jobs,
    workers,
    blobs,
)
"""Every table, parents before children (the order to create them in)."""
