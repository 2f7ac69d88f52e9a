"""Kernel records to column values and back: the only place that knows both shapes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Row

from stagewise._records import (
    Delivery,
    ErrorInfo,
    EventRecord,
    IdempotencyRecord,
    JobMessage,
    LogLine,
    LogRecord,
    RunRecord,
    RunValueRecord,
    SignalRecord,
    StageRecord,
    StreamItemRecord,
    WorkerRecord,
)
from stagewise._states import RunStatus, StageStatus

Values = dict[str, Any]


class Fields:
    """A row read on a driver directly (an asyncpg record, a composite value in one, or
    SQLite's decoded values) whose columns read as attributes, like a SQLAlchemy row's, so
    the same mappers serve every path. The values live in the instance's own dict: an
    attribute read is a plain lookup (about three times faster, per row, than resolving
    each name through `__getattr__`, which matters for runs with hundreds of stages)."""

    def __init__(self, pairs: Iterable[tuple[str, Any]]) -> None:
        self.__dict__.update(pairs)


def _error(info: ErrorInfo | None) -> Any:
    return None if info is None else info.to_json()


def run_values(run: RunRecord) -> Values:
    return {
        "run_id": run.run_id,
        "workflow_id": run.workflow_id,
        "status": run.status.value,
        "priority": run.priority,
        "current_group": run.current_group,
        "event_seq": run.event_seq,
        "input": run.input,
        "config": run.config,
        "output": run.output,
        "output_ref": run.output_ref,
        "error": _error(run.error),
        "idempotency_key": run.idempotency_key,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "version": run.version,
        "workflow_version": run.workflow_version,
        "attempts_before": run.attempts_before or None,
        "metadata": run.metadata,
        "deadline": run.deadline,
        "signal_seq": run.signal_seq,
    }


def run_from_row(row: Any) -> RunRecord:
    """From a SQLAlchemy row, or a driver row read by attribute (`_pg`)."""
    return RunRecord(
        run_id=row.run_id,
        workflow_id=row.workflow_id,
        status=RunStatus(row.status),
        input=row.input,
        config=row.config,
        created_at=row.created_at,
        updated_at=row.updated_at,
        priority=row.priority,
        current_group=row.current_group,
        event_seq=row.event_seq,
        output=row.output,
        output_ref=row.output_ref,
        error=ErrorInfo.from_json(row.error),
        idempotency_key=row.idempotency_key,
        started_at=row.started_at,
        finished_at=row.finished_at,
        version=row.version,
        workflow_version=row.workflow_version,
        attempts_before=row.attempts_before or {},
        metadata=row.metadata,
        deadline=row.deadline,
        signal_seq=row.signal_seq,
    )


def stage_values(stage: StageRecord) -> Values:
    return {
        "run_id": stage.run_id,
        "stage_id": stage.stage_id,
        "group_index": stage.group_index,
        "status": stage.status.value,
        "attempt": stage.attempt,
        "uncounted": stage.uncounted,
        "job_id": stage.job_id,
        "worker_id": stage.worker_id,
        "lease_expires_at": stage.lease_expires_at,
        "due_at": stage.due_at,
        "enqueued_at": stage.enqueued_at,
        "suspend_state": stage.suspend_state,
        "suspend_deadline": stage.suspend_deadline,
        "output": stage.output,
        "output_ref": stage.output_ref,
        "metrics": stage.metrics,
        "artifacts": stage.artifacts,
        "error": _error(stage.error),
        "progress": stage.progress,
        "progress_message": stage.progress_message,
        "created_at": stage.created_at,
        "updated_at": stage.updated_at,
        "started_at": stage.started_at,
        "finished_at": stage.finished_at,
    }


def stage_from_row(row: Any) -> StageRecord:
    """From a SQLAlchemy row, or a driver row read by attribute (`_pg`)."""
    return StageRecord(
        run_id=row.run_id,
        stage_id=row.stage_id,
        group_index=row.group_index,
        status=StageStatus(row.status),
        created_at=row.created_at,
        updated_at=row.updated_at,
        attempt=row.attempt,
        uncounted=row.uncounted,
        job_id=row.job_id,
        worker_id=row.worker_id,
        lease_expires_at=row.lease_expires_at,
        due_at=row.due_at,
        enqueued_at=row.enqueued_at,
        suspend_state=row.suspend_state,
        suspend_deadline=row.suspend_deadline,
        output=row.output,
        output_ref=row.output_ref,
        metrics=row.metrics,
        artifacts=row.artifacts,
        error=ErrorInfo.from_json(row.error),
        progress=row.progress,
        progress_message=row.progress_message,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def event_values(event: EventRecord) -> Values:
    return {
        "event_id": event.event_id,
        "run_id": event.run_id,
        "seq": event.seq,
        "type": event.type,
        "occurred_at": event.occurred_at,
        "payload": event.payload,
    }


def event_from_row(row: Row[Any]) -> EventRecord:
    return EventRecord(
        event_id=row.event_id,
        run_id=row.run_id,
        seq=row.seq,
        type=row.type,
        occurred_at=row.occurred_at,
        payload=row.payload,
    )


def delivery_values(delivery: Delivery) -> Values:
    return {
        "event_id": delivery.event_id,
        "consumer": delivery.consumer,
        "run_id": delivery.run_id,
        "seq": delivery.seq,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at,
        "claimed_by": delivery.claimed_by,
        "claimed_until": delivery.claimed_until,
        "last_error": delivery.last_error,
    }


def delivery_from_row(row: Row[Any]) -> Delivery:
    return Delivery(
        event_id=row.event_id,
        consumer=row.consumer,
        run_id=row.run_id,
        seq=row.seq,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        claimed_by=row.claimed_by,
        claimed_until=row.claimed_until,
        last_error=row.last_error,
    )


def idempotency_values(record: IdempotencyRecord) -> Values:
    return {
        "scope": record.scope,
        "key": record.key,
        "fingerprint": record.fingerprint,
        "state": record.state,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "result": record.result,
    }


def idempotency_from_row(row: Row[Any]) -> IdempotencyRecord:
    return IdempotencyRecord(
        scope=row.scope,
        key=row.key,
        fingerprint=row.fingerprint,
        state=row.state,
        created_at=row.created_at,
        expires_at=row.expires_at,
        result=row.result,
    )


def log_values(record: LogRecord) -> Values:
    return {
        "run_id": record.run_id,
        "stage_id": record.stage_id,
        "attempt": record.attempt,
        "level": record.level,
        "message": record.message,
        "fields": record.fields,
        "at": record.at,
    }


def log_from_row(row: Row[Any]) -> LogRecord:
    return LogRecord(
        run_id=row.run_id,
        stage_id=row.stage_id,
        attempt=row.attempt,
        level=row.level,
        message=row.message,
        fields=row.fields,
        at=row.at,
    )


def log_line_from_row(row: Row[Any]) -> LogLine:
    return log_from_row(row).line(row.id)


def job_values(job: JobMessage) -> Values:
    return {
        "job_id": job.job_id,
        "run_id": job.run_id,
        "workflow_id": job.workflow_id,
        "workflow_version": job.workflow_version,
        "stage_id": job.stage_id,
        "attempt": job.attempt,
        "priority": job.priority,
        "available_at": job.available_at,
        "worker_id": None,
        "lease_expires_at": None,
    }


def job_from_row(row: Row[Any]) -> JobMessage:
    return JobMessage(
        job_id=row.job_id,
        run_id=row.run_id,
        workflow_id=row.workflow_id,
        stage_id=row.stage_id,
        attempt=row.attempt,
        available_at=row.available_at,
        priority=row.priority,
        lease_expires_at=row.lease_expires_at,
        workflow_version=row.workflow_version,
    )


def worker_values(worker: WorkerRecord) -> Values:
    return {
        "worker_id": worker.worker_id,
        "host": worker.host,
        "pid": worker.pid,
        "started_at": worker.started_at,
        "last_seen_at": worker.last_seen_at,
        "beat_interval": worker.beat_interval,
        "streak_since": worker.streak_since,
        "slots": worker.slots,
        "workflows": [list(pair) for pair in worker.workflows],
        "software": worker.software,
        "stopped_at": worker.stopped_at,
    }


def worker_from_row(row: Any) -> WorkerRecord:
    return WorkerRecord(
        worker_id=row.worker_id,
        host=row.host,
        pid=row.pid,
        started_at=row.started_at,
        last_seen_at=row.last_seen_at,
        beat_interval=row.beat_interval,
        streak_since=row.streak_since,
        slots=row.slots,
        workflows=tuple((w, v) for w, v in row.workflows),
        software=row.software,
        stopped_at=row.stopped_at,
    )


def signal_values(signal: SignalRecord) -> Values:
    return {
        "run_id": signal.run_id,
        "seq": signal.seq,
        "signal_id": signal.signal_id,
        "topic": signal.topic,
        "payload": signal.payload,
        "idempotency_key": signal.idempotency_key,
        "sent_at": signal.sent_at,
        "consumed_by": signal.consumed_by,
        "consumed_at": signal.consumed_at,
    }


def signal_from_row(row: Any) -> SignalRecord:
    return SignalRecord(
        run_id=row.run_id,
        seq=row.seq,
        signal_id=row.signal_id,
        topic=row.topic,
        payload=row.payload,
        sent_at=row.sent_at,
        idempotency_key=row.idempotency_key,
        consumed_by=row.consumed_by,
        consumed_at=row.consumed_at,
    )


def value_values(value: RunValueRecord) -> Values:
    return {
        "run_id": value.run_id,
        "key": value.key,
        "value": value.value,
        "stage_id": value.stage_id,
        "attempt": value.attempt,
        "set_at": value.set_at,
    }


def value_from_row(row: Any) -> RunValueRecord:
    return RunValueRecord(
        run_id=row.run_id,
        key=row.key,
        value=row.value,
        stage_id=row.stage_id,
        attempt=row.attempt,
        set_at=row.set_at,
    )


def stream_item_values(item: StreamItemRecord) -> Values:
    return {
        "run_id": item.run_id,
        "key": item.key,
        "seq": item.offset,
        "value": item.value,
        "stage_id": item.stage_id,
        "attempt": item.attempt,
        "written_at": item.written_at,
        "closed": item.closed,
    }


def stream_item_from_row(row: Any) -> StreamItemRecord:
    return StreamItemRecord(
        run_id=row.run_id,
        key=row.key,
        offset=row.seq,
        value=row.value,
        stage_id=row.stage_id,
        attempt=row.attempt,
        written_at=row.written_at,
        closed=bool(row.closed),
    )
