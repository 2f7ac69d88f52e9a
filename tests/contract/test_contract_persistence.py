"""The Persistence port: units of work, runs and stages, on every backend."""

from __future__ import annotations

import contextlib
from dataclasses import fields, replace

import pytest

from stagewise._errors import ConcurrentUpdateError, DuplicateRecordError
from stagewise._query import RunFilter
from stagewise._records import Changeset, RunRecord, RunWrite, StageRecord, WorkerRecord
from stagewise._states import RunStatus, StageStatus
from tests.conftest import Adapters
from tests.contract.factories import (
    assert_aware,
    at,
    delivery,
    error,
    event,
    idem,
    job,
    log,
    logs_of,
    run,
    stage,
)


async def apply(backend: Adapters, changes: Changeset) -> None:
    async with backend.persistence.transaction() as tx:
        await tx.apply(changes)


async def insert_runs(backend: Adapters, *runs: RunRecord) -> None:
    await apply(backend, Changeset(new_runs=runs))


async def insert_stages(backend: Adapters, *stages: StageRecord) -> None:
    async with backend.persistence.transaction() as tx:
        missing = [
            run(run_id, status=RunStatus.RUNNING)
            for run_id in dict.fromkeys(s.run_id for s in stages)
            if await tx.runs.get(run_id) is None
        ]
        await tx.apply(Changeset(new_runs=tuple(missing), stages=stages))


def update(before: RunRecord, after: RunRecord) -> RunWrite:
    """`after` written over `before`, at the next version."""
    return RunWrite(replace(after, version=before.version + 1), expected_version=before.version)


def assert_run_times_aware(r: RunRecord) -> None:
    assert_aware(r.created_at, r.updated_at, r.started_at, r.finished_at)


def assert_stage_times_aware(s: StageRecord) -> None:
    assert_aware(
        s.created_at,
        s.updated_at,
        s.lease_expires_at,
        s.due_at,
        s.enqueued_at,
        s.suspend_deadline,
        s.started_at,
        s.finished_at,
    )


# --- units of work -----------------------------------------------------------------------


async def test_a_committed_transaction_is_seen_by_the_next_one(backend: Adapters) -> None:
    await insert_runs(backend, run("r1"))

    async with backend.persistence.transaction() as tx:
        got = await tx.runs.get("r1")

    assert got == run("r1")


async def test_a_transaction_sees_its_own_writes(backend: Adapters) -> None:
    async with backend.persistence.transaction() as tx:
        await tx.apply(Changeset(new_runs=(run("r1"),), stages=(stage("r1", "a"),)))
        assert await tx.runs.get("r1") == run("r1")
        assert [s.stage_id for s in await tx.stages.for_run("r1")] == ["a"]


async def test_an_exception_in_the_block_leaves_nothing_behind(backend: Adapters) -> None:
    await insert_runs(backend, run("r0"))
    ev = event("r1", 1)

    class Boom(Exception):
        pass

    async def doomed() -> None:
        async with backend.persistence.transaction() as tx:
            await tx.apply(
                Changeset(
                    new_runs=(run("r1"),),
                    runs=(update(run("r0"), replace(run("r0"), status=RunStatus.CANCELLED)),),
                    stages=(stage("r1", "a"),),
                    events=(ev,),
                    deliveries=(delivery(ev),),
                    logs=(log("r1", "hello"),),
                    idempotency=(idem("k1"),),
                )
            )
            assert await tx.runs.get("r1") == run("r1")  # sent before this read
            await backend.job_transport.enqueue([job("j1", "r1")], tx=tx)
            raise Boom

    with pytest.raises(Boom):
        await doomed()

    async with backend.persistence.transaction() as tx:
        assert await tx.runs.get("r1") is None
        assert (await tx.runs.get("r0")) == run("r0")
        assert await tx.stages.for_run("r1") == []
        assert await tx.outbox.events("r1") == []
        assert await tx.outbox.claim(now=at(0), limit=10, claimer="c", claim_until=at(30)) == []
        assert await tx.idempotency.get("run.create", "k1") is None
    assert await logs_of(backend, "r1") == []
    assert await backend.job_transport.dequeue(worker_id="w", limit=10, lease_for=30) == []


# --- runs --------------------------------------------------------------------------------


async def test_a_run_comes_back_field_for_field(backend: Adapters) -> None:
    full = run(
        "r1",
        status=RunStatus.FAILED,
        priority=7,
        input={"text": "héllo ✓", "items": [1, 2.5, None, True], "deep": {"a": {"b": []}}},
        config={"s1": {"x": 1}, "s2": {}},
        current_group=2,
        event_seq=9,
        output=[{"ok": False}],
        output_ref="runs/r1/output",
        error=error(),
        idempotency_key="idem-1",
        started_at=at(1.5),
        finished_at=at(2.000001),
        updated_at=at(3),
        attempts_before={"s1": 2, "s2": 1},
    )
    await insert_runs(backend, full, run("r2", input=None, config={}))

    async with backend.persistence.transaction() as tx:
        got = await tx.runs.get("r1")
        bare = await tx.runs.get("r2")
        missing = await tx.runs.get("nope")

    assert got == full
    assert bare == run("r2", input=None, config={})
    assert missing is None
    assert got is not None
    assert bare is not None
    assert_run_times_aware(got)
    assert_run_times_aware(bare)


async def test_an_update_writes_every_field_of_a_run_at_the_next_version(
    backend: Adapters,
) -> None:
    await insert_runs(backend, run("r1"))
    changed = replace(
        run("r1"),
        status=RunStatus.COMPLETED,
        priority=3,
        current_group=1,
        event_seq=4,
        output={"answer": 42},
        error=error("late"),
        started_at=at(1),
        finished_at=at(2),
        updated_at=at(2),
        version=2,
    )

    async with backend.persistence.transaction() as tx:
        await tx.apply(Changeset(runs=(RunWrite(changed, expected_version=1),)))
    async with backend.persistence.transaction() as tx:
        assert await tx.runs.get("r1") == changed
        cleared = replace(changed, error=None, output=None, version=3)
        await tx.apply(Changeset(runs=(RunWrite(cleared, expected_version=2),)))
    async with backend.persistence.transaction() as tx:
        assert await tx.runs.get("r1") == replace(changed, error=None, output=None, version=3)


async def test_an_update_made_on_a_version_that_is_gone_writes_nothing(
    backend: Adapters,
) -> None:
    await insert_runs(backend, run("r1"), run("r2"))
    moved = update(run("r1"), replace(run("r1"), priority=5))
    await apply(backend, Changeset(runs=(moved,)))

    late = update(run("r1"), replace(run("r1"), priority=9))  # made on version 1, now 2
    other = update(run("r2"), replace(run("r2"), priority=9))
    with pytest.raises(ConcurrentUpdateError):
        await apply(backend, Changeset(runs=(other, late), stages=(stage("r2", "a"),)))

    async with backend.persistence.transaction() as tx:
        assert await tx.runs.get("r1") == moved.run
        assert await tx.runs.get("r2") == run("r2")
        assert await tx.stages.for_run("r2") == []


async def test_a_run_or_idempotency_key_inserted_twice_is_refused(backend: Adapters) -> None:
    await apply(backend, Changeset(new_runs=(run("r1"),), idempotency=(idem("k1"),)))

    with pytest.raises(DuplicateRecordError):
        await insert_runs(backend, run("r2"), run("r1"))
    with pytest.raises(DuplicateRecordError):
        await apply(backend, Changeset(new_runs=(run("r3"),), idempotency=(idem("k1"),)))

    async with backend.persistence.transaction() as tx:
        assert [r.run_id for r in await tx.runs.find()] == ["r1"]
        assert await tx.idempotency.get("run.create", "k1") == idem("k1")


async def test_load_reads_the_run_and_leaves_out_a_missing_one(backend: Adapters) -> None:
    await insert_runs(backend, run("r1"))

    async with backend.persistence.transaction() as tx:
        assert await tx.runs.load(["r1"]) == [(run("r1"), [])]
        assert await tx.runs.load(["r1"], skip_locked=True) == [(run("r1"), [])]
        assert await tx.runs.load(["nope"]) == []
        assert await tx.runs.load(["nope"], skip_locked=True) == []


async def test_load_returns_the_runs_that_exist_in_id_order(backend: Adapters) -> None:
    await insert_runs(backend, run("r2"), run("r1"), run("r3"))

    async with backend.persistence.transaction() as tx:
        got = [r for r, _ in await tx.runs.load(["r3", "nope", "r1", "r3"])]
        assert await tx.runs.load([]) == []

    assert got == [run("r1"), run("r3")]


async def test_load_gives_each_run_with_its_stages_in_order(
    backend: Adapters,
) -> None:
    await insert_runs(backend, run("r2"), run("r1"), run("r3"))
    rows = [
        stage("r2", "b", group=1),
        stage("r2", "z", group=0),
        stage("r2", "a", group=1),
        stage("r1", "x"),
    ]
    await apply(backend, Changeset(stages=tuple(rows)))
    async with backend.persistence.transaction() as tx:
        got = await tx.runs.load(["r3", "nope", "r2", "r1", "r2"])

    assert [(r.run_id, [s.stage_id for s in ss]) for r, ss in got] == [
        ("r1", ["x"]),
        ("r2", ["z", "a", "b"]),
        ("r3", []),
    ]
    assert got[0] == (run("r1"), [stage("r1", "x")])  # every field, as stored


async def test_updates_write_every_field_of_each_run(backend: Adapters) -> None:
    await insert_runs(backend, run("r1"), run("r2"))
    done = update(run("r1"), replace(run("r1"), status=RunStatus.COMPLETED, output={"n": 1}))
    moved = update(run("r2"), replace(run("r2"), current_group=2, started_at=at(1)))

    async with backend.persistence.transaction() as tx:
        await tx.apply(Changeset(runs=(done, moved)))
        await tx.apply(Changeset())
    async with backend.persistence.transaction() as tx:
        assert [r for r, _ in await tx.runs.load(["r1", "r2"])] == [done.run, moved.run]


async def test_claim_pending_takes_highest_priority_then_oldest(backend: Adapters) -> None:
    await insert_runs(
        backend,
        run("old-low", priority=0, created=1),
        run("new-high", priority=5, created=9),
        run("old-high", priority=5, created=2),
        run("mid", priority=1, created=5),
        run("tie-b", priority=1, created=5),
        run("running", status=RunStatus.RUNNING, priority=9),
        run("done", status=RunStatus.COMPLETED, priority=9),
        run("newest-low", priority=0, created=10),
    )

    async with backend.persistence.transaction() as tx:
        first = await tx.runs.claim_pending(3)
        everything = await tx.runs.claim_pending(100)

    assert [r.run_id for r in first] == ["old-high", "new-high", "mid"]
    assert [r.run_id for r in everything] == [
        "old-high",
        "new-high",
        "mid",
        "tie-b",
        "old-low",
        "newest-low",
    ]
    assert first[0] == run("old-high", priority=5, created=2)  # unchanged rows


async def test_claim_pending_returns_nothing_when_nothing_is_pending(backend: Adapters) -> None:
    await insert_runs(backend, run("r1", status=RunStatus.RUNNING))
    async with backend.persistence.transaction() as tx:
        assert await tx.runs.claim_pending(10) == []


async def test_find_lists_newest_first_with_filters_and_a_keyset(backend: Adapters) -> None:
    await insert_runs(
        backend,
        run("a", created=1, workflow_id="wf1"),
        run("b", created=2, workflow_id="wf2", status=RunStatus.RUNNING),
        run("c", created=3, workflow_id="wf1", status=RunStatus.RUNNING),
        run("d", created=3, workflow_id="wf1"),
        run("e", created=4, workflow_id="wf2"),
    )

    async with backend.persistence.transaction() as tx:
        newest = [r.run_id for r in await tx.runs.find()]
        running = [r.run_id for r in await tx.runs.find(RunFilter(status=RunStatus.RUNNING))]
        wf1 = [r.run_id for r in await tx.runs.find(RunFilter(workflow_id="wf1"))]
        both = await tx.runs.find(RunFilter(status=RunStatus.PENDING, workflow_id="wf1"))
        page = [r.run_id for r in await tx.runs.find(limit=2, before=(at(4), "e"))]
        past_end = await tx.runs.find(before=(at(1), "a"))

    assert newest == ["e", "d", "c", "b", "a"]
    assert running == ["c", "b"]
    assert wf1 == ["d", "c", "a"]
    assert [r.run_id for r in both] == ["d", "a"]
    assert page == ["d", "c"]
    assert past_end == []


# --- stages ------------------------------------------------------------------------------


async def test_stages_come_back_in_group_then_byte_wise_id_order(backend: Adapters) -> None:
    # Ids whose order differs between byte-wise and natural-language collations.
    ids = ["b_1", "B", "a", "b-1", "b1", "_x", "Z", "é"]
    await insert_stages(
        backend,
        *[stage("r1", i, group=1) for i in ids],
        stage("r1", "z-first", group=0),
        stage("r2", "other"),
    )

    async with backend.persistence.transaction() as tx:
        got = [s.stage_id for s in await tx.stages.for_run("r1")]
        assert await tx.stages.for_run("nope") == []

    assert got == ["z-first", *sorted(ids)]


async def test_load_reads_the_stages_of_several_runs_in_run_then_group_order(
    backend: Adapters,
) -> None:
    await insert_stages(
        backend,
        stage("r2", "b", group=1),
        stage("r2", "a", group=1),
        stage("r2", "z", group=0),
        stage("r1", "x"),
        stage("r3", "other"),
    )

    async with backend.persistence.transaction() as tx:
        loaded = await tx.runs.load(["r2", "r1", "nope"])
        got = [(s.run_id, s.stage_id) for _, stages in loaded for s in stages]

    assert got == [("r1", "x"), ("r2", "z"), ("r2", "a"), ("r2", "b")]


async def test_a_stage_comes_back_field_for_field_and_a_changeset_rewrites_it(
    backend: Adapters,
) -> None:
    plain = stage("r1", "a")
    await insert_stages(backend, plain, stage("r1", "b"))
    full = replace(
        plain,
        status=StageStatus.SUSPENDED,
        attempt=3,
        uncounted=2,
        job_id="job-3",
        worker_id="w1",
        lease_expires_at=at(30),
        due_at=at(60),
        enqueued_at=at(1),
        suspend_state={"batch": "b-1", "ids": [1, 2]},
        suspend_deadline=at(3600),
        output={"rows": 10},
        output_ref="runs/r1/a",
        metrics={"rows": 10.0, "secs": 0.25},
        artifacts={"report": "runs/r1/a/report"},
        error=error(),
        progress=0.5,
        progress_message="half way",
        started_at=at(1),
        finished_at=at(2),
        updated_at=at(2),
    )

    await apply(backend, Changeset(stages=(full, replace(stage("r1", "b"), attempt=2))))
    async with backend.persistence.transaction() as tx:
        got = await tx.stages.for_run("r1")

    assert got == [full, replace(stage("r1", "b"), attempt=2)]
    for s in got:
        assert_stage_times_aware(s)
    assert [f.name for f in fields(StageRecord) if getattr(full, f.name) is None] == []


async def test_a_changeset_deletes_only_the_named_stages(backend: Adapters) -> None:
    await insert_stages(backend, stage("r1", "a"), stage("r1", "b"), stage("r1", "c"))
    await insert_stages(backend, stage("r2", "a"))

    deleted = (("r1", "a"), ("r1", "c"), ("r1", "missing"))
    await apply(backend, Changeset(deleted_stages=deleted))

    async with backend.persistence.transaction() as tx:
        assert [s.stage_id for s in await tx.stages.for_run("r1")] == ["b"]
        assert [s.stage_id for s in await tx.stages.for_run("r2")] == ["a"]


async def test_due_for_poll_finds_due_unheld_suspended_stages_earliest_first(
    backend: Adapters,
) -> None:
    suspended = StageStatus.SUSPENDED
    await insert_stages(
        backend,
        stage("r1", "late", status=suspended, due_at=at(50)),
        stage("r1", "early", status=suspended, due_at=at(10)),
        stage("r1", "exactly-now", status=suspended, due_at=at(60)),
        stage("r1", "future", status=suspended, due_at=at(61)),
        stage("r1", "held", status=suspended, due_at=at(5), lease_expires_at=at(90)),
        stage("r1", "hold-lapsed", status=suspended, due_at=at(20), lease_expires_at=at(60)),
        stage("r1", "running", status=StageStatus.RUNNING, due_at=at(1)),
        stage("r1", "no-due", status=suspended),
        stage("r0", "tie", status=suspended, due_at=at(50)),
    )

    async with backend.persistence.transaction() as tx:
        due = await tx.stages.due_for_poll(at(60), 100)
        first_two = await tx.stages.due_for_poll(at(60), 2)

    assert [(s.run_id, s.stage_id) for s in due] == [
        ("r1", "early"),
        ("r1", "hold-lapsed"),
        ("r0", "tie"),
        ("r1", "late"),
        ("r1", "exactly-now"),
    ]
    assert [s.stage_id for s in first_two] == ["early", "hold-lapsed"]


async def test_past_deadline_and_next_deadline_see_only_unfinished_runs(
    backend: Adapters,
) -> None:
    running, pending = RunStatus.RUNNING, RunStatus.PENDING
    async with backend.persistence.transaction() as tx:
        assert await tx.runs.past_deadline(at(100), 10) == []
        assert await tx.runs.next_deadline(at(0)) is None
    await insert_runs(
        backend,
        run("late", status=running, deadline=at(50)),
        run("later", status=pending, deadline=at(60)),
        run("exactly", status=running, deadline=at(100)),
        run("ahead", status=running, deadline=at(150)),
        run("further", status=pending, deadline=at(400)),
        run("done", status=RunStatus.COMPLETED, deadline=at(10), finished_at=at(5)),
        run("failed", status=RunStatus.FAILED, deadline=at(120), finished_at=at(5)),
        run("none", status=running),
    )
    async with backend.persistence.transaction() as tx:
        late = await tx.runs.past_deadline(at(100), 10)
        first = await tx.runs.past_deadline(at(100), 1)
        upcoming = await tx.runs.next_deadline(at(100))
        last = await tx.runs.next_deadline(at(150))
        beyond = await tx.runs.next_deadline(at(400))
    assert [r.run_id for r in late] == ["late", "later", "exactly"]
    assert late[0].deadline == at(50)  # the column round-trips, timezone-aware
    assert [r.run_id for r in first] == ["late"]
    assert (upcoming, last, beyond) == (at(150), at(400), None)


async def test_next_poll_at_is_the_earliest_suspended_due_time_still_to_come(
    backend: Adapters,
) -> None:
    suspended = StageStatus.SUSPENDED
    async with backend.persistence.transaction() as tx:
        assert await tx.stages.next_poll_at(at(0)) is None
    await insert_stages(
        backend,
        stage("r1", "due", status=suspended, due_at=at(10)),
        stage("r1", "next", status=suspended, due_at=at(70)),
        stage("r1", "later", status=suspended, due_at=at(3600)),
        stage("r1", "retrying", status=StageStatus.RETRYING, due_at=at(65)),
        stage("r1", "no-due", status=suspended),
    )
    async with backend.persistence.transaction() as tx:
        assert await tx.stages.next_poll_at(at(60)) == at(70)
        assert await tx.stages.next_poll_at(at(70)) == at(3600)
        assert await tx.stages.next_poll_at(at(3600)) is None


async def test_expired_leases_finds_running_stages_past_their_lease(backend: Adapters) -> None:
    running = StageStatus.RUNNING
    await insert_stages(
        backend,
        stage("r1", "expired-late", status=running, lease_expires_at=at(50), worker_id="w1"),
        stage("r1", "expired-early", status=running, lease_expires_at=at(10), worker_id="w2"),
        stage("r1", "expires-now", status=running, lease_expires_at=at(60), worker_id="w2"),
        stage("r1", "alive", status=running, lease_expires_at=at(61), worker_id="w1"),
        stage("r1", "no-lease", status=running, worker_id="w1"),
        stage("r1", "not-running", status=StageStatus.RETRYING, lease_expires_at=at(1)),
    )

    async with backend.persistence.transaction() as tx:
        expired = await tx.stages.expired_leases(at(60), 100)
        limited = await tx.stages.expired_leases(at(60), 1)
        with_w1 = await tx.stages.expired_leases(at(60), 100, holders=["w1"])
        with_both = await tx.stages.expired_leases(at(60), 100, holders=["w1", "w2"])

    assert [s.stage_id for s in expired] == ["expired-early", "expired-late", "expires-now"]
    assert [s.stage_id for s in limited] == ["expired-early"]
    # A worker's own stages come too, expired or not (a stage without a lease sorts as now).
    assert [s.stage_id for s in with_w1] == [
        "expired-early",
        "expired-late",
        "expires-now",
        "no-lease",
        "alive",
    ]
    assert len(with_both) == 5


async def test_unstarted_finds_due_waiting_stages_enqueued_before_the_cutoff(
    backend: Adapters,
) -> None:
    await insert_stages(
        backend,
        stage("r1", "old", enqueued_at=at(5)),
        stage("r1", "older", status=StageStatus.RETRYING, enqueued_at=at(1), due_at=at(20)),
        stage("r1", "recent", enqueued_at=at(30)),
        stage("r1", "not-due", status=StageStatus.RETRYING, enqueued_at=at(2), due_at=at(99)),
        stage("r1", "never-enqueued"),
        stage("r1", "started", status=StageStatus.RUNNING, enqueued_at=at(1)),
        stage("r1", "at-cutoff", enqueued_at=at(30)),
    )

    async with backend.persistence.transaction() as tx:
        lost = await tx.stages.unstarted(at(30), at(60), 100)
        first = await tx.stages.unstarted(at(30), at(60), 1)

    assert [s.stage_id for s in lost] == ["older", "old"]
    assert [s.stage_id for s in first] == ["older"]


@pytest.mark.parametrize("refused", ["stale", "duplicate"])
async def test_a_refused_write_commits_nothing_even_when_its_error_is_caught(
    backend: Adapters, refused: str
) -> None:
    await insert_runs(backend, run("r1"))
    bad = (
        Changeset(runs=(update(replace(run("r1"), version=5), run("r1")),))
        if refused == "stale"
        else Changeset(new_runs=(run("r1"),))
    )

    async def careless() -> None:
        async with backend.persistence.transaction() as tx:
            await tx.apply(Changeset(new_runs=(run("r2"),), stages=(stage("r1", "a"),)))
            # A caller that swallows the error cannot commit the rest.
            with contextlib.suppress(ConcurrentUpdateError, DuplicateRecordError):
                await tx.apply(bad)
                await tx.runs.get("r1")  # (SQL sends the changesets with the next read)

    with pytest.raises(ConcurrentUpdateError if refused == "stale" else DuplicateRecordError):
        await careless()
    async with backend.persistence.transaction() as tx:
        assert await tx.runs.get("r2") is None
        assert await tx.stages.for_run("r1") == []
        assert await tx.runs.get("r1") == run("r1")


async def test_a_delivery_inserted_twice_is_refused(backend: Adapters) -> None:
    ev = event("r1", 1)
    await apply(backend, Changeset(new_runs=(run("r1"),), events=(ev,), deliveries=(delivery(ev),)))

    with pytest.raises(DuplicateRecordError):
        await apply(backend, Changeset(deliveries=(delivery(ev),)))


def test_a_run_write_moves_the_run_to_the_next_version_only() -> None:
    with pytest.raises(ValueError, match="next version"):
        RunWrite(replace(run("r1"), version=3), expected_version=1)


async def test_claim_pending_takes_only_runs_of_the_workflow_versions_asked_for(
    backend: Adapters,
) -> None:
    await insert_runs(
        backend,
        run("v1", workflow_version="v1"),
        run("v2", workflow_version="v2", created=1),
        run("old", created=2),  # made before versions were: goes with its workflow id
        run("other", workflow_id="other", workflow_version="v2", created=3),
    )

    async with backend.persistence.transaction() as tx:
        mine = await tx.runs.claim_pending(10, workflows=[("wf", "v2")])
        nothing = await tx.runs.claim_pending(10, workflows=[])
        every = await tx.runs.claim_pending(10)

    assert [r.run_id for r in mine] == ["v2", "old"]
    assert mine[0].workflow_version == "v2"
    assert nothing == []
    assert [r.run_id for r in every] == ["v1", "v2", "old", "other"]


async def test_workers_are_saved_whole_found_by_id_and_pruned_by_last_beat(
    backend: Adapters,
) -> None:
    def worker(worker_id: str, seen: int, **fields: object) -> WorkerRecord:
        return WorkerRecord(
            worker_id=worker_id,
            host="box-1",
            pid=4242,
            started_at=at(1),
            last_seen_at=at(seen),
            beat_interval=5.0,
            streak_since=at(2),
            **fields,  # type: ignore[arg-type]
        )

    full = worker(
        "w-b",
        30,
        slots=8,
        workflows=(("orders", "v1"), ("orders", "v2"), ("émoji ✓", "3")),
        software="1.2.3",
        stopped_at=at(31),
    )
    async with backend.persistence.transaction() as tx:
        await tx.workers.save(worker("w-c", 10))
        await tx.workers.save(worker("w-b", 20))
        await tx.workers.save(full)  # an upsert: every field is replaced
    async with backend.persistence.transaction() as tx:
        found = await tx.workers.find()
        pruned = await tx.workers.prune(at(15))
    async with backend.persistence.transaction() as tx:
        left = await tx.workers.find()

    assert [w.worker_id for w in found] == ["w-b", "w-c"]
    assert found[0] == full
    assert_aware(found[0].started_at, found[0].last_seen_at, found[0].streak_since)
    assert_aware(found[0].stopped_at)
    assert pruned == 1
    assert left == [full]


async def test_active_versions_counts_unfinished_runs_by_workflow_and_version(
    backend: Adapters,
) -> None:
    R = RunStatus
    await insert_runs(
        backend,
        run("r1", workflow_id="b", workflow_version="v1"),
        run("r2", workflow_id="b", workflow_version="v1", status=R.RUNNING),
        run("r3", workflow_id="b", workflow_version="v2", status=R.RUNNING),
        run("r4", workflow_id="b", workflow_version="v3", status=R.COMPLETED),
        run("r5", workflow_id="a"),  # recorded before versions
        run("r6", workflow_id="a", workflow_version="v1", status=R.FAILED),
        run("r7", workflow_id="a", workflow_version="v9", status=R.CANCELLED),
    )
    async with backend.persistence.transaction() as tx:
        active = await tx.runs.active_versions()

    assert active == [("a", None, 1), ("b", "v1", 2), ("b", "v2", 1)]
