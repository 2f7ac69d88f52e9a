"""The run aggregate's signal decisions: a signal sent to a run, and a wait that begins.

A run's signals are its mailbox: rows numbered under the run's lock (`signal_seq`), each
consumed by exactly one wait. Both ways a signal meets its wait are decided under that
lock, so they cannot both happen, nor either twice:

* **the wait is there first**: `signal` finds the SUSPENDED stage waiting on the topic and
  completes it with the payload in the signal's own transaction (which also starts
  whatever comes next, so another process's worker is woken by that commit's jobs);
* **the signal is there first**: it waits in the mailbox, and the transaction that
  records the wait's beginning (`record_attempt` with a signal `Suspension`) takes the
  oldest one on the topic instead of suspending (`consume_at_start`).

A timeout is the poll of a suspended stage, fenced like any poll: if a signal completed the
stage first, the poll's verdict finds it no longer SUSPENDED and changes nothing; if the
timeout was recorded first, the signal finds no wait and goes to the mailbox.

`RunSignals` sits between the maintenance decisions and `_run.Run` (whose docstring is the
theory of operation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from pydantic import ValidationError

from stagewise._decisions import Decision, Output
from stagewise._errors import InvalidInputError, RunNotActiveError
from stagewise._events import RunSignalled
from stagewise._records import ErrorInfo, Json, SignalRecord
from stagewise._run_maintenance import RunMaintenance
from stagewise._run_rows import S
from stagewise._stages import SignalSpec
from stagewise._workflow import _summary


class RunSignals(RunMaintenance):
    """The decisions about a run's signals (see the module docstring)."""

    def signal_waiter(self, topic: str) -> str | None:
        """The stage waiting for a signal on `topic` now, if one is (the first by id)."""
        waiting = sorted(
            s.stage_id
            for s in self.stages.values()
            if s.status is S.SUSPENDED and self._waits_on(s.stage_id) == topic
        )
        return waiting[0] if waiting else None

    def signal(
        self,
        *,
        signal_id: str,
        topic: str,
        payload: Json,
        idempotency_key: str | None,
        outputs: Mapping[str, Json],
    ) -> Decision[SignalRecord]:
        """A signal sent to the run: consumed at once by the stage waiting on `topic`
        (completed with the payload; the run moves on), or kept in the mailbox. `outputs`
        holds the blobs `refs_to_finish(signal_waiter(topic))` named, by key.

        Raises:
            RunNotActiveError: the run has ended.
            InvalidInputError: the waiting stage's payload model refuses the payload.
        """
        run = self.record
        if run.status.is_terminal:
            raise RunNotActiveError(run.run_id, run.status.value)
        seq = run.signal_seq + 1
        record = SignalRecord(
            run.run_id, seq, signal_id, topic, payload, self.now, idempotency_key=idempotency_key
        )
        waiter = self.signal_waiter(topic)
        value: Json = None
        if waiter is not None:
            value, error = _validated(self._spec(waiter), payload)
            if error is not None:  # refused before anything changed: nothing is written
                raise InvalidInputError(
                    f"the signal on topic {topic!r} does not match what stage {waiter!r} of "
                    f"run {run.run_id!r} waits for: {error}"
                )
            record = replace(record, consumed_by=waiter, consumed_at=self.now)
        self._bump(signal_seq=seq)
        self._log.signals.append(record)
        self._emit(RunSignalled, topic=topic, signal_id=signal_id, consumed_by=waiter)
        if waiter is not None:
            self._complete_stage(waiter, "resume", Output(value=value), outputs)
        return self._decided(record)

    def _consume_at_start(
        self, stage_id: str, signal: SignalRecord, outputs: Mapping[str, Json]
    ) -> str:
        """A wait begins and finds `signal` in the mailbox: the attempt completes with its
        payload (or fails, not retried, when the payload does not match the stage's model:
        it was sent before anything could check it). "completed" or "failed"."""
        self._log.signals.append(replace(signal, consumed_by=stage_id, consumed_at=self.now))
        value, error = _validated(self._spec(stage_id), signal.payload)
        if error is not None:
            message = (
                f"the signal on topic {signal.topic!r} sent before stage {stage_id!r} waited "
                f"does not match what it waits for: {error}"
            )
            self._fail_stage(stage_id, ErrorInfo("InvalidInputError", message, retryable=False))
            return "failed"
        self._complete_stage(stage_id, "complete", Output(value=value), outputs)
        return "completed"

    def _spec(self, stage_id: str) -> SignalSpec:
        spec = self._plan.stage(stage_id).signal
        assert spec is not None, f"stage {stage_id!r} does not wait for signals"
        return spec

    def _waits_on(self, stage_id: str) -> str | None:
        if self.workflow is None or stage_id not in {s.id for s in self.workflow.stages}:
            return None
        spec = self._plan.stage(stage_id).signal
        return None if spec is None else spec.topic


def _validated(spec: SignalSpec, payload: Json) -> tuple[Json, str | None]:
    """The payload as the stage's output (JSON, validated by its model), or why not."""
    if spec.payload is None:
        return payload, None
    try:
        return spec.payload.model_validate(payload).model_dump(mode="json"), None
    except ValidationError as exc:
        return None, _summary(exc)
