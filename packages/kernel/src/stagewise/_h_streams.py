"""Handler for `stream.write`: an attempt appends to one of its run's streams (see
`_run_streams` for the rules; a close is written with the attempt's outcome, `_h_jobs`).

Each write is a transaction of its own, under the run's lock: the stream's tail is read
there, the item numbered after it, and written with the run's row; a reader sees it once
that commits, before the attempt goes on. A refusal writes nothing: an attempt that lost
its stage is told to stop (as a heartbeat would tell it), and hears `LeaseLost`.
"""

from __future__ import annotations

import json

from stagewise._commands import StreamWrite
from stagewise._conflicts import retrying_conflicts
from stagewise._context import StreamWriter
from stagewise._errors import InvalidInputError, LeaseLost, StreamClosedError
from stagewise._records import JobMessage, Json
from stagewise._results import StreamWriteResult
from stagewise._run_streams import Appended
from stagewise._runtime import Runtime
from stagewise._text import UnstorableValue, encode_json


async def stream_write(rt: Runtime, cmd: StreamWrite) -> StreamWriteResult:
    """Raises:
    InvalidInputError: a value that is not JSON, or larger than `max_payload_bytes`.
    LeaseLost: the job no longer holds its stage (or its run ended).
    StreamClosedError: the stream was closed before.
    """
    job = cmd.job
    value = _stored(cmd, rt.settings.max_payload_bytes)
    async with rt.unit(cmd.type) as unit:
        run = await unit.run(job.run_id)
        if run is None:
            appended = Appended(refused="lost", reason="the run no longer exists")
        else:
            tail = await unit.tx.streams.tail(job.run_id, cmd.key)
            decided = run.append_stream(job, cmd.key, value, tail=tail)
            appended = decided.outcome
    if appended.refused == "lost":
        attempt = rt.inflight.get(job.job_id)
        if attempt is not None:
            attempt.token._cancel()
        raise LeaseLost(job.run_id, job.stage_id, job.attempt, appended.reason)
    if appended.refused == "closed":
        raise StreamClosedError(job.run_id, cmd.key)
    assert appended.offset is not None
    return StreamWriteResult(offset=appended.offset)


def stream_writer(rt: Runtime, job: JobMessage) -> StreamWriter:
    """How the context of the attempt `job` runs writes its streams (`ctx.write_stream`):
    a `stream.write` per item, tried again when the database aborts it for a conflict."""

    async def write(key: str, value: Json) -> int:
        cmd = StreamWrite(job=job, key=key, value=value)
        result = await retrying_conflicts(lambda: stream_write(rt, cmd), cmd.type)
        return result.offset

    return write


def _stored(cmd: StreamWrite, limit: int) -> Json:
    """The value as it will be stored: JSON, text a database can keep (`_text`)."""
    try:
        encoded = encode_json(cmd.value)
    except UnstorableValue as exc:
        raise InvalidInputError(f"stream {cmd.key!r}: the value {exc}") from None
    size = len(encoded)
    if size > limit:
        raise InvalidInputError(
            f"stream {cmd.key!r}: an item of {size} bytes is over the {limit}-byte limit"
            " (max_payload_bytes)"
        )
    return json.loads(encoded)
