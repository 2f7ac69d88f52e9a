"""Handler for `run.signal`: a signal sent to a run (see `_run_signals` for the rules).

Everything is decided under the run's lock, in one transaction: the idempotency key looked
up, the signal numbered and stored, and, when a stage is waiting on its topic, that stage
completed with it and the run moved on. A refusal (no such run, a run that ended, a payload
the waiting stage refuses) raises inside the transaction, which then writes nothing.
"""

from __future__ import annotations

from stagewise._attempt import load_blobs
from stagewise._commands import RunSignal
from stagewise._errors import RunNotFoundError
from stagewise._results import RunSignalResult
from stagewise._runtime import Runtime


async def run_signal(rt: Runtime, cmd: RunSignal) -> RunSignalResult:
    async with rt.unit(cmd.type) as unit:
        run = await unit.run(cmd.run_id)
        if run is None:
            raise RunNotFoundError(cmd.run_id)
        if cmd.idempotency_key is not None:
            sent = await unit.tx.signals.by_key(cmd.run_id, cmd.idempotency_key)
            if sent is not None:  # sent before: that signal, nothing new
                return RunSignalResult(
                    run_id=cmd.run_id,
                    signal_id=sent.signal_id,
                    consumed_by=sent.consumed_by,
                    duplicate=True,
                )
        if run.workflow is None:  # the payload's model is in a plan this process lacks
            record = run.record  # raises WorkflowNotFoundError (or its version's)
            rt.registry.get_workflow(record.workflow_id, record.workflow_version)
        waiter = run.signal_waiter(cmd.topic)
        refs = run.refs_to_finish(waiter) if waiter is not None else []
        outputs = await load_blobs(rt.ports.blob_store, refs)
        signal = run.signal(
            signal_id=unit.rules.new_id(),
            topic=cmd.topic,
            payload=cmd.payload,
            idempotency_key=cmd.idempotency_key,
            outputs=outputs,
        ).outcome
    return RunSignalResult(
        run_id=cmd.run_id, signal_id=signal.signal_id, consumed_by=signal.consumed_by
    )
