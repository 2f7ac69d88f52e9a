"""The persistence port: a unit of work (`Persistence.transaction`) and the stores of its
transaction. The contract notes every adapter honours are in `_ports`' docstring; the
contract suite (`tests/contract`) checks them on every adapter."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from stagewise._query import RunFilter
from stagewise._records import (
    Changeset,
    ClaimedDelivery,
    Delivery,
    EventRecord,
    IdempotencyRecord,
    LogLine,
    RunRecord,
    RunValueRecord,
    SignalRecord,
    StageRecord,
    StreamItemRecord,
    WorkerRecord,
)


class RunStore(Protocol):
    """Runs and their stages: the run aggregate's repository."""

    async def load(
        self, run_ids: Sequence[str], *, skip_locked: bool = False
    ) -> list[tuple[RunRecord, list[StageRecord]]]:
        """Lock every run of `run_ids` that exists until the transaction ends, in run_id
        order (two transactions locking overlapping sets never wait on each other in a
        cycle), and return each with its stage rows in (group_index, stage_id) order, as
        current once the lock is held. One round trip where the database allows.

        With `skip_locked`, a run locked by another transaction is left out instead of
        waited for. Adapters may rely on the rule every writer keeps: a change to any of a
        run's stages comes with the run's row at the next `version`."""
        ...

    async def claim_pending(
        self, limit: int, *, workflows: Sequence[tuple[str, str]] | None = None
    ) -> list[RunRecord]:
        """Lock up to `limit` PENDING runs, highest priority first, then oldest.

        Rows locked by another transaction are skipped (`FOR UPDATE SKIP LOCKED`), so
        concurrent claimers never get the same run. A PENDING run has no stage rows. With
        `workflows`, only runs of those (workflow id, version) pairs (a run with no version
        recorded: of those workflow ids)."""
        ...

    async def get(self, run_id: str) -> RunRecord | None:
        """The run as committed (a plain read, no lock)."""
        ...

    async def find(
        self,
        where: RunFilter | None = None,
        *,
        before: tuple[datetime, str] | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Up to `limit` runs that pass `where` (`RunFilter.matches` says which), newest
        first: by (created_at, run_id), descending. A plain read, no lock.

        `before` is the keyset cursor: only runs whose (created_at, run_id) sorts below it,
        i.e. after the last run of the previous page (see `stagewise._query` for why this
        neither repeats nor skips a run while others are created between pages)."""
        ...

    async def active_versions(self) -> list[tuple[str, str | None, int]]:
        """(workflow id, workflow version, how many) of the PENDING and RUNNING runs, by
        workflow id and version (None: recorded before versions, sorted first)."""
        ...

    async def past_deadline(self, now: datetime, limit: int) -> list[RunRecord]:
        """Up to `limit` PENDING or RUNNING runs whose deadline is at or before `now`,
        earliest deadline first (read without locks: candidates, checked again under
        the run's lock)."""
        ...

    async def next_deadline(self, now: datetime) -> datetime | None:
        """The earliest deadline after `now` of a PENDING or RUNNING run (None: none)."""
        ...

    async def finished_before(self, before: datetime, limit: int) -> list[RunRecord]:
        """Lock up to `limit` COMPLETED, FAILED or CANCELLED runs that finished before
        `before`, oldest first (then by run id), skipping rows another transaction has locked
        (a purge never waits on a worker, nor a worker on it)."""
        ...

    async def purge(self, run_ids: Sequence[str]) -> int:
        """Delete these runs (their locks held by this transaction) with their stage rows,
        events and those events' deliveries, and log lines; how many runs were deleted.
        Idempotency keys and blobs are the caller's (`IdempotencyStore.delete`)."""
        ...


class StageStore(Protocol):
    """Reads of stage rows: for views, and the candidates maintenance looks at. Each is a
    plain read; the kernel locks a candidate's run and checks it again before it acts."""

    async def for_run(self, run_id: str) -> list[StageRecord]:
        """Every stage row of the run, in (group_index, stage_id) order."""
        ...

    async def due_for_poll(self, now: datetime, limit: int) -> list[StageRecord]:
        """SUSPENDED stages whose `due_at` has come and that no poller holds (a poller holds
        a stage while its `lease_expires_at` is in the future). Earliest due first."""
        ...

    async def next_poll_at(self, now: datetime) -> datetime | None:
        """The earliest `due_at` after `now` of any SUSPENDED stage (None when none is):
        when the next sleep wakes or the next poll is due, for a host to set its timer by,
        whichever process suspended it."""
        ...

    async def expired_leases(
        self, now: datetime, limit: int, *, holders: Sequence[str] = ()
    ) -> list[StageRecord]:
        """RUNNING stages whose lease expired, plus every RUNNING stage one of `holders`
        (worker ids) holds, whatever its expiry."""
        ...

    async def unstarted(
        self, enqueued_before: datetime, now: datetime, limit: int
    ) -> list[StageRecord]:
        """PENDING or RETRYING stages that are due (`due_at <= now`) and whose job was
        handed to the transport before `enqueued_before`: their delivery may be lost."""
        ...


class LogStore(Protocol):
    """Reading a run's log lines (they are written with `Changeset.logs`)."""

    async def for_run(
        self, run_id: str, *, after: int = 0, stage_id: str | None = None, limit: int = 1000
    ) -> list[LogLine]:
        """Up to `limit` of the run's lines whose id is above `after` (of `stage_id` only,
        when given), in id order: the order they were written. A caller that passes the
        last id it got as `after` next time gets every later line once (see `LogLine`)."""
        ...


class SignalStore(Protocol):
    """Reading a run's mailbox (signals are written with `Changeset.signals`)."""

    async def pending(self, run_id: str, topic: str) -> list[SignalRecord]:
        """The run's signals on `topic` no wait has consumed, oldest (lowest `seq`) first."""
        ...

    async def by_key(self, run_id: str, idempotency_key: str) -> SignalRecord | None:
        """The run's signal sent with this idempotency key, if any."""
        ...

    async def for_run(self, run_id: str) -> list[SignalRecord]:
        """Every signal of the run, in the order sent."""
        ...


class ValueStore(Protocol):
    """Reading the values runs published (`ctx.set_event`; written with
    `Changeset.values`)."""

    async def get(self, run_id: str, key: str) -> RunValueRecord | None:
        """The run's latest value under `key`, if one was published."""
        ...

    async def for_run(self, run_id: str) -> list[RunValueRecord]:
        """Every key the run published, with its latest value, by key."""
        ...


class StreamStore(Protocol):
    """Reading runs' streams (`ctx.write_stream`; written with `Changeset.stream_items`)."""

    async def tail(self, run_id: str, key: str) -> StreamItemRecord | None:
        """The stream's last item (None: nothing written yet)."""
        ...

    async def read(
        self, run_id: str, key: str, *, offset: int = 0, limit: int = 1000
    ) -> list[StreamItemRecord]:
        """Up to `limit` items from `offset` on, in order."""
        ...


class WorkerStore(Protocol):
    """The workers of the fleet: each one's beat, for `stagewise workers list` and for
    taking over the attempts of one that is gone."""

    async def save(self, worker: WorkerRecord) -> None:
        """Write every field of the worker's row (an upsert)."""
        ...

    async def find(self) -> list[WorkerRecord]:
        """Every worker that has a row, by worker id."""
        ...

    async def prune(self, before: datetime) -> int:
        """Delete the rows of workers not seen since `before`; returns how many."""
        ...


class OutboxStore(Protocol):
    """Delivering events: they are written with the changes that caused them (`Changeset`),
    and delivered from here."""

    async def claim(
        self, *, now: datetime, limit: int, claimer: str, claim_until: datetime
    ) -> list[ClaimedDelivery]:
        """Claim pending deliveries in per-(consumer, run) order.

        A (consumer, run) group is eligible when its earliest pending delivery is due
        (`next_attempt_at` is null or <= now) and unclaimed (`claimed_until` is null or
        <= now). All pending deliveries of eligible groups are claimed, up to `limit`, and
        returned ordered by (consumer, run_id, seq). Two claimers never get the same group.
        """
        ...

    async def update(self, deliveries: Sequence[Delivery]) -> None:
        """Write status, attempts, next_attempt_at, claim and last_error of deliveries."""
        ...

    async def replay_dead(
        self, *, consumer: str | None, event_ids: Sequence[str] | None, now: datetime
    ) -> int:
        """Make dead-lettered deliveries pending again (attempts reset); returns how many."""
        ...

    async def events(self, run_id: str, *, after_seq: int = 0) -> list[EventRecord]:
        """The run's events after `after_seq`, in order."""
        ...


class IdempotencyStore(Protocol):
    """Idempotency keys: written with the effect they guard (`Changeset`), read here."""

    async def get(self, scope: str, key: str) -> IdempotencyRecord | None: ...

    async def delete(self, scope: str, keys: Sequence[str]) -> int:
        """Delete these keys of `scope` (those of purged runs); how many there were."""
        ...

    async def purge_expired(self, now: datetime) -> int:
        """Delete completed records past their `expires_at`; returns how many."""
        ...


class Transaction(Protocol):
    """One unit of work. Its stores see and change the same transaction."""

    @property
    def runs(self) -> RunStore: ...

    @property
    def stages(self) -> StageStore: ...

    @property
    def outbox(self) -> OutboxStore: ...

    @property
    def idempotency(self) -> IdempotencyStore: ...

    @property
    def workers(self) -> WorkerStore: ...

    @property
    def logs(self) -> LogStore: ...

    @property
    def signals(self) -> SignalStore: ...

    @property
    def values(self) -> ValueStore: ...

    @property
    def streams(self) -> StreamStore: ...

    async def apply(self, changes: Changeset) -> None:
        """Write `changes` in this transaction (see `Changeset` for what refuses it). The
        adapter may hold the writes until the transaction's next statement or its commit;
        an error still surfaces inside the transaction, which then rolls back whole."""
        ...


class Persistence(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A unit of work: commit on normal exit, roll back entirely on an exception."""
        ...
