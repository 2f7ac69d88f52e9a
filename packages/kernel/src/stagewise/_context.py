"""What a running stage sees: its input, config, earlier outputs, storage and cancellation."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from stagewise._decisions import Reports
from stagewise._errors import (
    InvalidInputError,
    NotFoundError,
    RunCancelledError,
    StreamClosedError,
)
from stagewise._ports import BlobStore
from stagewise._records import Json, LogRecord
from stagewise._text import UnstorableValue, encode_json, scrub

logger = logging.getLogger("stagewise.stage")

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50}


class CancellationToken:
    """Tells running code that its run was cancelled.

    Truthy once cancelled. `await token.wait()` blocks until then; sync stages can poll
    `token.is_cancelled` from their thread. Async stages are also interrupted: the kernel
    cancels their task, so `asyncio.CancelledError` is raised at their next await.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._cancelled = False

    @property
    def is_cancelled(self) -> bool:
        return self._cancelled

    def __bool__(self) -> bool:
        return self._cancelled

    async def wait(self) -> None:
        await self._event.wait()

    def raise_if_cancelled(self, run_id: str = "") -> None:
        if self._cancelled:
            raise RunCancelledError(run_id)

    def _cancel(self) -> None:
        self._cancelled = True
        self._event.set()


class RunStorage:
    """Blob storage scoped to one run: keys live under `runs/<run_id>/storage/`."""

    def __init__(self, blob_store: BlobStore, run_id: str) -> None:
        self._blobs = blob_store
        self._prefix = f"runs/{run_id}/storage/"

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"storage key {key!r} must be a relative path without '..'")
        return self._prefix + key

    async def put(self, key: str, data: bytes) -> None:
        await self._blobs.put(self._key(key), data)

    async def get(self, key: str) -> bytes:
        return await self._blobs.get(self._key(key))

    async def has(self, key: str) -> bool:
        return await self._blobs.has(self._key(key))

    async def delete(self, key: str) -> None:
        await self._blobs.delete(self._key(key))

    async def list(self, prefix: str = "") -> list[str]:
        keys = await self._blobs.list(self._prefix + prefix)
        return [k[len(self._prefix) :] for k in keys]


@dataclass
class AttemptBuffer:
    """Logs and progress a running attempt reported, waiting for the next write.

    They are written with the attempt's next heartbeat or with its final transaction, so a
    chatty stage costs no extra transactions.
    """

    logs: list[LogRecord] = field(default_factory=list)
    progress: tuple[float, str | None] | None = None
    published: dict[str, Json] = field(default_factory=dict)
    """Values set with `ctx.set_event`, by key (the latest wins): written only with the
    attempt's recorded outcome, never with a heartbeat, so a failed attempt publishes
    nothing."""
    closing: list[str] = field(default_factory=list)
    """Streams closed with `ctx.close_stream`: closed with the recorded outcome, likewise."""

    def drain(self) -> Reports:
        """What was reported since the last drain (and forget it: it is being written)."""
        reports = Reports(tuple(self.logs), self.progress)
        self.logs, self.progress = [], None
        return reports


class StageContext:
    """The context passed to `execute(ctx)` and `check_completion(state, ctx)`."""

    def __init__(
        self,
        *,
        run_id: str,
        workflow_id: str,
        stage_id: str,
        attempt: int,
        input: Any,
        run_input: Json = None,
        run_input_model: type[BaseModel] | None = None,
        config: Any,
        resume_state: Json,
        outputs: Mapping[str, Json],
        output_models: Mapping[str, type[BaseModel] | None],
        storage: RunStorage,
        cancelled: CancellationToken,
        buffer: AttemptBuffer,
        now: Callable[[], datetime],
        streams: StreamWriter | None = None,
    ) -> None:
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.stage_id = stage_id
        self.attempt = attempt
        self.input = input
        self._run_input = run_input
        self._run_input_model = run_input_model
        self.config = config
        self.resume_state = resume_state
        self.storage = storage
        self.cancelled = cancelled
        self._outputs = outputs
        self._output_models = output_models
        self._buffer = buffer
        self._now = now
        self._streams = streams

    @property
    def run_input(self) -> Any:
        """The run's input, in every stage (`input` is the previous group's output after
        the first group): as the workflow's input model when it has one."""
        model = self._run_input_model
        return self._run_input if model is None else model.model_validate(self._run_input)

    def now(self) -> datetime:
        """The time on the kernel's clock (the database's, on the SQL backends; a
        `FakeClock`'s in tests): the time leases, retries and sleeps are reckoned in."""
        return self._now()

    def require(self, stage_id: str) -> Any:
        """The output of an earlier, completed stage (as its output model when it has one).

        Raises:
            NotFoundError: the stage has not completed before this one.
        """
        if stage_id not in self._outputs:
            raise NotFoundError(
                f"stage {self.stage_id!r} requires the output of {stage_id!r}, "
                "which has not completed before it"
            )
        model = self._output_models.get(stage_id)
        value = self._outputs[stage_id]
        return model.model_validate(value) if model is not None else value

    def optional(self, stage_id: str) -> Any:
        """Like `require`, but None when that stage has no output."""
        return self.require(stage_id) if stage_id in self._outputs else None

    def log(self, level: str, message: str, **fields: Any) -> None:
        """Record a log line on the run (stored with the stage) and in `logging`."""
        level_name = scrub(str(level).lower())
        logger.log(
            _LEVELS.get(level_name, 20),
            message,
            extra={"run_id": self.run_id, "stage_id": self.stage_id, "attempt": self.attempt},
        )
        self._buffer.logs.append(
            LogRecord(
                run_id=self.run_id,
                stage_id=self.stage_id,
                attempt=self.attempt,
                level=level_name,
                message=scrub(str(message)),
                fields={scrub(str(k)): _jsonable(v) for k, v in fields.items()},
                at=self._now(),
            )
        )

    def set_event(self, key: str, value: Any) -> None:
        """Publish `value` (JSON) under `key` for clients to read while the run goes on
        (`Kernel.get_event`, `stagewise runs events`). It is committed with this attempt's
        outcome: a failed or fenced attempt publishes nothing. The latest value wins.

        Raises:
            InvalidInputError: a key that is empty, over 200 characters or holds a NUL;
                a value that is not JSON (or holds text a database cannot store).
        """
        key = _key("event", key)
        self._buffer.published[key] = _stored("event", key, value)

    async def write_stream(self, key: str, value: Any) -> int:
        """Append `value` (JSON) to the run's stream `key`, durably and in order, and return
        its offset (0, 1, 2... per key). Readers (`Kernel.read_stream`) see it as soon as
        this returns, not when the stage finishes; it is never taken back, so the items of
        an attempt that then fails stay, marked with its attempt number.

        Raises:
            InvalidInputError: a bad key (as for `set_event`), a value that is not JSON or
                over `max_payload_bytes`.
            StreamClosedError: the stream was closed (`close_stream`).
            LeaseLost: this attempt no longer holds its stage (its lease was reaped, or its
                run was cancelled): it should stop.
            RuntimeError: called where no attempt runs (a poll's `check_completion`).
            TransientError: the database could not be reached; the item may have been
                stored (its commit's answer was lost), so a write tried again may store
                it twice, marked with the same attempt.
        """
        return await self._stream(_key("stream", key), _stored("stream", key, value))

    def close_stream(self, key: str) -> None:
        """Close the run's stream `key`: readers end after its last item, and later writes
        are refused. The close is committed with this attempt's outcome, like `set_event`:
        a failed attempt closes nothing, so its retry goes on writing the same stream
        (readers end once the stage's outcome is recorded). Closing twice does nothing; a
        stream never closed ends for readers when the run ends. (A stage that runs again
        after a rerun may write to the stream it closed: the stream goes on.)

        Raises:
            InvalidInputError: a bad key (as for `set_event`).
        """
        key = _key("stream", key)
        if key not in self._buffer.closing:
            self._buffer.closing.append(key)

    async def _stream(self, key: str, value: Json) -> int:
        if self._streams is None:
            raise RuntimeError(f"stage {self.stage_id!r}: streams are written from execute()")
        if key in self._buffer.closing:
            raise StreamClosedError(self.run_id, key)
        return await self._streams(key, value)

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress (0-100). Only the latest report is kept until the next write."""
        text = None if message is None else scrub(str(message))
        self._buffer.progress = (max(0.0, min(100.0, float(percent))), text)


StreamWriter = Callable[[str, Json], Awaitable[int]]
"""How a context writes to its run's streams: (key, value) -> the item's offset."""


def _key(kind: str, key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > 200 or "\x00" in key:
        raise InvalidInputError(f"{kind} key {key!r}: 1-200 characters, no NUL")
    return key


def _stored(kind: str, key: str, value: Any) -> Json:
    """`value` as it will be stored: JSON, text a database can keep (`_text`)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return json.loads(encode_json(value))
    except UnstorableValue as exc:
        raise InvalidInputError(f"{kind} {key!r} {exc}") from None


def _jsonable(value: Any) -> Json:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no NaN: a log field says it in words
    if value is None or isinstance(value, int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {scrub(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, BaseModel):
        return _jsonable(value.model_dump(mode="json"))
    return scrub(repr(value))
