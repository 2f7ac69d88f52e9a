"""The run aggregate's stream decisions: an attempt appends an item to one of its run's
streams (`ctx.write_stream`), or its recorded outcome closes it (`ctx.close_stream`).

A stream is a run's ordered, append-only log under a key, for readers to follow while the
run goes on (LLM tokens, progress lines). Unlike everything else an attempt reports, an
item is written at once, in a transaction of its own, not with the attempt's outcome: a
reader sees it as soon as `write_stream` returns. So an item is never taken back: a
retried attempt's items stay, marked with the attempt that wrote them. The close, on the
other hand, is written with the attempt's outcome, and only if it is not a failure: an
attempt that closes its stream and then fails must not leave its retry unable to write.

The rules, and the race each one closes:

* **Numbered under the run's lock.** An item's offset is the stream's last offset plus
  one, read under the run's lock (the handler passes the tail in), so concurrent writers
  (two coroutines of one attempt, or a zombie attempt and its successor) never take the
  same offset nor leave a gap, and a reader that has seen offset N has seen every offset
  before it.
* **Fenced like a heartbeat.** Only the job that holds the stage (RUNNING at its attempt,
  `holds`) may write: an attempt whose lease was reaped, or whose run was cancelled or
  ended, is refused before anything is written, and told to stop.
* **Closing is final, but for a rerun.** The close is the stream's last item; a write
  after it is refused (another stage's, or a late coroutine's), a second close changes
  nothing. Only the stage that closed it, running again at a later attempt (which, the
  close being written by a completing attempt, only a rerun makes), goes on writing after
  it: readers skip a close that items follow (`_stream_reader`).
* **The run's version moves with each item**, as with every change of the run, so a
  watcher of run versions (SQLite's change feed) hears of it.

`RunStreams` sits between the signal decisions and `_run.Run`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from stagewise._decisions import Decision
from stagewise._records import JobMessage, Json, StreamItemRecord
from stagewise._run_rows import holds
from stagewise._run_signals import RunSignals


@dataclass(frozen=True, slots=True)
class Appended:
    """What became of a write to a stream: the item's `offset`, or why it was `refused`
    (`lost`: the job no longer holds its stage; `closed`: the stream was closed)."""

    offset: int | None = None
    refused: Literal["lost", "closed"] | None = None
    reason: str = ""


class RunStreams(RunSignals):
    """The decisions about a run's streams (see the module docstring)."""

    def append_stream(
        self,
        job: JobMessage,
        key: str,
        value: Json,
        *,
        tail: StreamItemRecord | None,
    ) -> Decision[Appended]:
        """Append `value` to the stream `key` for the attempt `job` runs; `tail` is the
        stream's last item, read under the run's lock."""
        stage = self.stages.get(job.stage_id)
        if self.record.status.is_terminal:
            ended = f"the run is {self.record.status.value}"
            return self._decided(Appended(refused="lost", reason=ended))
        if stage is None or not holds(stage, job):
            held = "gone" if stage is None else f"{stage.status.value} at attempt {stage.attempt}"
            return self._decided(Appended(refused="lost", reason=f"the stage is {held}"))
        rerun = tail is not None and tail.stage_id == job.stage_id and tail.attempt < job.attempt
        if tail is not None and tail.closed and not rerun:
            return self._decided(Appended(refused="closed", reason=f"stream {key!r} is closed"))
        offset = self._append(job, key, value, tail, closed=False)
        self._bump()
        return self._decided(Appended(offset=offset))

    def _close_streams(self, job: JobMessage, tails: Mapping[str, StreamItemRecord | None]) -> None:
        """With an attempt's recorded outcome (not a failure): close the streams it closed
        (`ctx.close_stream`); `tails` are their last items, read under the run's lock. A
        stream closed already stays as it is."""
        for key, tail in tails.items():
            if tail is None or not tail.closed:
                self._append(job, key, None, tail, closed=True)

    def _append(
        self,
        job: JobMessage,
        key: str,
        value: Json,
        tail: StreamItemRecord | None,
        *,
        closed: bool,
    ) -> int:
        offset = 0 if tail is None else tail.offset + 1
        item = StreamItemRecord(
            run_id=self.record.run_id,
            key=key,
            offset=offset,
            value=value,
            stage_id=job.stage_id,
            attempt=job.attempt,
            written_at=self.now,
            closed=closed,
        )
        self._log.stream_items.append(item)
        return offset
