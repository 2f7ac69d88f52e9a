"""What a running stage sees: its input, config, earlier outputs, storage and cancellation."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from stagewise._decisions import Reports
from stagewise._errors import InvalidInputError, NotFoundError, RunCancelledError
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
        if not isinstance(key, str) or not key or len(key) > 200 or "\x00" in key:
            raise InvalidInputError(f"event key {key!r}: 1-200 characters, no NUL")
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        try:  # as it will be stored: JSON, text a database can keep (`_text`)
            self._buffer.published[key] = json.loads(encode_json(value))
        except UnstorableValue as exc:
            raise InvalidInputError(f"event {key!r} {exc}") from None

    def progress(self, percent: float, message: str | None = None) -> None:
        """Report progress (0-100). Only the latest report is kept until the next write."""
        text = None if message is None else scrub(str(message))
        self._buffer.progress = (max(0.0, min(100.0, float(percent))), text)


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
