"""`run.purge`: finished runs deleted in bounded batches, optionally archived first.

Theory of operation. Retention is housekeeping, so it must never get in the way of the work:

* **One short transaction per batch, locking only what it deletes.** `finished_before`
  locks at most `limit` finished runs and skips any row another transaction holds
  (PostgreSQL `SKIP LOCKED`), so a purge never waits on a worker and a worker waits on a
  purge for one batch at most (a few hundred rows, tens of milliseconds). On SQLite the
  batch is the write transaction every writer takes in turn, so it is kept short the same
  way: by its size, never by the size of the backlog.
* **A run changes only while unfinished, and only under its lock.** The candidates are
  chosen and locked by one statement that checks their state, so a run rerun between two
  batches is RUNNING again and not chosen; one being rerun right now is locked and skipped.
* **The archive is written before the delete commits.** A crash between the two leaves the
  run and its archive (the next purge writes the archive again and deletes the run), never
  a run deleted unarchived.
* **Blobs go after the commit.** The blob store is outside the transaction: deleting them
  first could leave a run that refers to missing blobs if the delete then failed. A crash
  after the commit leaves blobs of no run behind, under `runs/<run_id>/`, which nothing reads
  (a later purge of that run id cannot happen; they are garbage, found by their prefix).
"""

from __future__ import annotations

from stagewise._attempt import load_outputs, stored_output
from stagewise._commands import RunPurge, RunPurgeResult
from stagewise._h_runs import IDEMPOTENCY_SCOPE
from stagewise._ports import BlobStore, Transaction
from stagewise._records import RunRecord, StageRecord
from stagewise._runtime import Runtime
from stagewise._text import encode_json

_LOG_PAGE = 10_000


async def run_purge(rt: Runtime, cmd: RunPurge) -> RunPurgeResult:
    """Delete (after archiving, with `cmd.archive`) up to `cmd.limit` runs finished before
    the cutoff; `more` when others are left."""
    blobs = rt.ports.blob_store
    async with rt.ports.persistence.transaction() as tx:
        found = await tx.runs.finished_before(cmd.finished_before, cmd.limit + 1)
        batch, more = found[: cmd.limit], len(found) > cmd.limit
        if cmd.archive:
            for run in batch:
                await blobs.put(archive_key(run), await _archive(tx, blobs, run))
        purged = await tx.runs.purge([run.run_id for run in batch])
        keys = [run.idempotency_key for run in batch if run.idempotency_key is not None]
        if keys:
            await tx.idempotency.delete(IDEMPOTENCY_SCOPE, keys)
    for run in batch:
        await _delete_blobs(blobs, run.run_id)
    return RunPurgeResult(purged=purged, archived=len(batch) if cmd.archive else 0, more=more)


def archive_key(run: RunRecord) -> str:
    """Where `run.purge --archive` keeps a run: one JSON document per run."""
    return f"archive/{run.workflow_id}/{run.run_id}.json"


async def _archive(tx: Transaction, blobs: BlobStore, run: RunRecord) -> bytes:
    """The run as one JSON document: its row, its stage rows, its events and its log, with
    the outputs that were kept in the blob store in their place (artifacts and
    `ctx.storage` are not archived: they are bytes of the stage's own)."""
    stages = await tx.stages.for_run(run.run_id)
    events = await tx.outbox.events(run.run_id)
    lines = []
    after = 0
    while True:
        page = await tx.logs.for_run(run.run_id, after=after, limit=_LOG_PAGE)
        lines += page
        if len(page) < _LOG_PAGE:
            break
        after = page[-1].id
    document = {
        "archive": 1,
        "run": {**_run_json(run), "output": await stored_output(blobs, run)},
        "stages": [
            {**_stage_json(s), "output": (await load_outputs(blobs, [s])).get(s.stage_id)}
            for s in stages
        ],
        "events": [
            {"seq": e.seq, "type": e.type, "at": e.occurred_at.isoformat(), **e.payload}
            for e in events
        ],
        "logs": [
            {
                "id": line.id,
                "at": line.at.isoformat(),
                "stage_id": line.stage_id,
                "attempt": line.attempt,
                "level": line.level,
                "message": line.message,
                "fields": line.fields,
            }
            for line in lines
        ],
    }
    return encode_json(document)


def _run_json(run: RunRecord) -> dict[str, object]:
    return {
        "run_id": run.run_id,
        "workflow_id": run.workflow_id,
        "workflow_version": run.workflow_version,
        "status": run.status.value,
        "input": run.input,
        "config": run.config,
        "output": run.output,
        "output_ref": run.output_ref,
        "error": None if run.error is None else run.error.to_json(),
        "metadata": run.metadata,
        "idempotency_key": run.idempotency_key,
        "priority": run.priority,
        "created_at": run.created_at.isoformat(),
        "started_at": None if run.started_at is None else run.started_at.isoformat(),
        "finished_at": None if run.finished_at is None else run.finished_at.isoformat(),
    }


def _stage_json(stage: StageRecord) -> dict[str, object]:
    return {
        "stage_id": stage.stage_id,
        "group": stage.group_index,
        "status": stage.status.value,
        "attempt": stage.attempt,
        "output": stage.output,
        "output_ref": stage.output_ref,
        "artifacts": stage.artifacts,
        "metrics": stage.metrics,
        "error": None if stage.error is None else stage.error.to_json(),
        "started_at": None if stage.started_at is None else stage.started_at.isoformat(),
        "finished_at": None if stage.finished_at is None else stage.finished_at.isoformat(),
    }


async def _delete_blobs(blobs: BlobStore, run_id: str) -> None:
    """Every blob of the run: its outputs, artifacts and `ctx.storage` (all under its
    prefix)."""
    for key in await blobs.list(f"runs/{run_id}/"):
        await blobs.delete(key)
