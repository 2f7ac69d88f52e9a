"""Small builders for the kernel's records, for contract and adapter tests."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from stagewise import JobExecute
from stagewise._ports import Transaction
from stagewise._records import (
    Changeset,
    ClaimedDelivery,
    Delivery,
    ErrorInfo,
    EventRecord,
    IdempotencyRecord,
    JobMessage,
    LogRecord,
    RunRecord,
    StageRecord,
)
from stagewise._states import RunStatus, StageStatus
from stagewise.testing import InMemoryPersistence, TestEnvironment
from stagewise.testing._clock import DEFAULT_START
from stagewise_sql import _rows, metadata
from tests.conftest import Adapters

T0 = DEFAULT_START
"""Where every FakeClock starts."""


def at(seconds: float) -> datetime:
    """T0 plus `seconds`."""
    return T0 + timedelta(seconds=seconds)


def run(
    run_id: str,
    *,
    workflow_id: str = "wf",
    status: RunStatus = RunStatus.PENDING,
    priority: int = 0,
    created: float = 0.0,
    **fields: Any,
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        workflow_id=workflow_id,
        status=status,
        input=fields.pop("input", {"n": 1}),
        config=fields.pop("config", {"s1": {"k": "v"}}),
        created_at=at(created),
        updated_at=fields.pop("updated_at", at(created)),
        priority=priority,
        **fields,
    )


def stage(
    run_id: str,
    stage_id: str,
    *,
    group: int = 0,
    status: StageStatus = StageStatus.PENDING,
    **fields: Any,
) -> StageRecord:
    return StageRecord(
        run_id=run_id,
        stage_id=stage_id,
        group_index=group,
        status=status,
        created_at=fields.pop("created_at", T0),
        updated_at=fields.pop("updated_at", T0),
        **fields,
    )


def event(run_id: str, seq: int, *, type: str = "stage.started") -> EventRecord:
    return EventRecord(
        event_id=f"{run_id}-e{seq}",
        run_id=run_id,
        seq=seq,
        type=type,
        occurred_at=at(seq),
        payload={"type": type, "run_id": run_id, "seq": seq, "nested": {"list": [1, 2.5, None]}},
    )


def delivery(ev: EventRecord, consumer: str = "sink", **fields: Any) -> Delivery:
    return Delivery(event_id=ev.event_id, consumer=consumer, run_id=ev.run_id, seq=ev.seq, **fields)


def events_of(run_id: str, seqs: Iterable[int]) -> list[EventRecord]:
    return [event(run_id, s) for s in seqs]


def job(
    job_id: str,
    run_id: str = "r1",
    *,
    priority: int = 0,
    available: float = 0.0,
    stage_id: str = "s1",
    attempt: int = 1,
) -> JobMessage:
    return JobMessage(
        job_id=job_id,
        run_id=run_id,
        workflow_id="wf",
        stage_id=stage_id,
        attempt=attempt,
        available_at=at(available),
        priority=priority,
    )


def idem(
    key: str,
    *,
    scope: str = "run.create",
    state: str = "in_progress",
    expires: float = 60.0,
    result: Any = None,
) -> IdempotencyRecord:
    return IdempotencyRecord(
        scope=scope,
        key=key,
        fingerprint=f"fp-{key}",
        state=state,  # type: ignore[arg-type]
        created_at=T0,
        expires_at=at(expires),
        result=result,
    )


def log(run_id: str, message: str, *, stage_id: str | None = None, when: float = 0.0) -> LogRecord:
    return LogRecord(
        run_id=run_id,
        stage_id=stage_id,
        attempt=None if stage_id is None else 1,
        level="INFO",
        message=message,
        fields={"k": message},
        at=at(when),
    )


def error(message: str = "boom") -> ErrorInfo:
    return ErrorInfo(type="ValueError", message=message, retryable=False, traceback="tb")


def assert_aware(*values: datetime | None) -> None:
    for value in values:
        assert value is None or value.tzinfo is not None, f"naive datetime {value!r}"
        assert value is None or value.utcoffset() == timedelta(0)


async def execute_chain(env: TestEnvironment, job: JobMessage, worker_id: str = "w") -> list[str]:
    """Execute `job` and every stage handed on to the worker after it; the stage ids run."""
    ran: list[str] = []
    next_job: JobMessage | None = job
    while next_job is not None:
        result = await env.kernel.dispatch(
            JobExecute(job=next_job, worker_id=worker_id, chain=True)
        )
        assert result.outcome == "completed"
        ran.append(result.stage_id)
        next_job = result.next_job
    return ran


# --- reading what the ports do not read back ---------------------------------------------


async def dead_letters(adapters: Adapters) -> list[ClaimedDelivery]:
    """Dead-lettered deliveries with their events, in (consumer, run_id, seq) order, read
    straight from the backend's storage."""
    if isinstance(adapters.persistence, InMemoryPersistence):
        events = {e.event_id: e for e in adapters.persistence.snapshot_events()}
        dead = [d for d in adapters.persistence.snapshot_deliveries() if d.status == "dead"]
    else:
        assert adapters.sql is not None
        d_t, e_t = metadata.tables["stagewise_deliveries"], metadata.tables["stagewise_events"]
        async with adapters.sql.engine.connect() as conn:
            dead = [
                _rows.delivery_from_row(row)
                for row in await conn.execute(select(d_t).where(d_t.c.status == "dead"))
            ]
            ids = [d.event_id for d in dead]
            rows = await conn.execute(select(e_t).where(e_t.c.event_id.in_(ids)))
            events = {row.event_id: _rows.event_from_row(row) for row in rows}
    dead.sort(key=lambda d: (d.consumer, d.run_id, d.seq))
    return [ClaimedDelivery(delivery=d, event=events[d.event_id]) for d in dead]


async def logs_of(adapters: Adapters, run_id: str) -> list[LogRecord]:
    """The run's log lines in the order written, read straight from the backend's storage."""
    if isinstance(adapters.persistence, InMemoryPersistence):
        return adapters.persistence.snapshot_logs(run_id)
    assert adapters.sql is not None
    logs_t = metadata.tables["stagewise_logs"]
    stmt = select(logs_t).where(logs_t.c.run_id == run_id).order_by(logs_t.c.id)
    async with adapters.sql.engine.connect() as conn:
        return [_rows.log_from_row(row) for row in await conn.execute(stmt)]


async def insert(tx: Transaction, *runs: RunRecord, stages: Iterable[StageRecord] = ()) -> None:
    """New runs (and stage rows) written in `tx`, as the kernel writes them."""
    await tx.apply(Changeset(new_runs=runs, stages=tuple(stages)))
