"""A fault at every operation of a representative workflow loses nothing.

The scenario (see `scenario.py`): two runs of a workflow with a parallel group, an async-batch
stage, a stage that fails once and is retried, a large output in the blob store, an artifact,
and a plugin. It is played once without faults to count its operations (every transaction
begin and commit, store call, transport, blob, sink and plugin call), then once per
operation N with a fault injected at N:

* `raise`: operation N fails before it takes effect (its transaction rolls back); the
  process lives on, logs, and its host carries on;
* `crash`: operation N takes effect and the process dies before hearing back (at a commit:
  the transaction committed and nobody knows); a fresh kernel on the same stores recovers,
  like a restarted process.

The client that creates the runs, and signals each at once (its signal waits in the run's
mailbox until the run's signal stage begins), retries with its idempotency keys until it
gets an answer.
After recovery (maintenance ticks, redelivery, time moving on) every run must reach the same
final state as the fault-free play, no stage may have completed twice, every event must
have reached the sink and the plugin at least once under one stable id, and no job or
delivery may be left behind. The sweep runs with the job transport inside the database
(enqueues commit with the state) and outside it (fed after commit: a crash in between loses
the enqueue, and maintenance must find it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stagewise import Kernel
from stagewise.testing import (
    FaultInjector,
    FaultMode,
    InjectedFault,
    RecordingScheduler,
    SimulatedCrash,
    run_until_idle,
)
from tests.reliability.scenario import SETTINGS, SqlWorld, World

pytestmark = pytest.mark.slow

RUNS = {"order-1": 1}
"""The client's runs: idempotency key -> input."""


async def _settle(
    world: World, kernel: Kernel, transport: Any, scheduler: RecordingScheduler
) -> None:
    """Play a host until everything is finished and delivered. Between passes time moves on
    by half a lease, as a host's fallback intervals would: a crashed process's leases
    expire, lost enqueues are found again, claimed deliveries are claimable again."""
    for _ in range(60):
        await run_until_idle(
            kernel,
            clock=world.clock,
            transport=transport,
            scheduler=scheduler,
            persistence=world.persistence,
            concurrency=4,
        )
        if await world.settled():
            return
        world.clock.advance(SETTINGS.lease_seconds / 2)
    raise AssertionError("the world did not settle")


async def play(world: World, faults: FaultInjector) -> None:
    """The system with `faults` in its adapters, until everything is settled.

    An injected error escapes to the host, which logs it and carries on; a crash ends the
    process, and a new one (a fresh kernel on the same stores) takes over. The client asks
    again for every run, and every signal, it never heard back about."""
    kernel, transport, scheduler = world.kernel(faults)
    created: dict[str, str] = {}  # key -> run id, once the creation was answered
    signalled: set[str] = set()
    try:
        for _life in range(3):
            try:
                for key, n in RUNS.items():
                    if key not in created:
                        created[key] = await world.create(kernel, key, n)
                    if key not in signalled:
                        await world.approve(kernel, created[key], f"{key}-go")
                        signalled.add(key)
                await _settle(world, kernel, transport, scheduler)
                return
            except (InjectedFault, SimulatedCrash):
                if faults.crashed:  # what the process had in memory is gone with it
                    await kernel.aclose()
                    kernel, transport, scheduler = world.kernel()
        raise AssertionError("more than one fault?")
    finally:
        await kernel.aclose()


async def _reference(external: bool) -> tuple[dict[str, Any], list[str]]:
    """The fault-free play's final state and operations. It is played twice and must make
    the same calls both times, however loaded the machine (the driver waits for what can
    still move on its own before it takes another pass): a fault placed at operation N then
    meets the same first N operations, and fires."""
    plays = []
    for _ in range(2):
        world = World(external_transport=external)
        counting = FaultInjector()
        await play(world, counting)
        await world.check_invariants()
        plays.append((await world.final_state(), counting.operations))
    assert plays[0] == plays[1], "two fault-free plays that differ"
    return plays[0]


@pytest.mark.parametrize("mode", ["raise", "crash"])
@pytest.mark.parametrize("external", [False, True], ids=["transport-in-db", "external-transport"])
async def test_a_fault_at_any_operation_ends_in_the_fault_free_state(
    mode: FaultMode, external: bool
) -> None:
    expected, operations = await _reference(external)
    assert {k: v[0] for k, v in expected.items()} == {"order-1": "COMPLETED"}
    kinds = {op.split(".")[0].split(":")[0] for op in operations}
    assert kinds >= {
        "persistence",
        "runs",
        "stages",
        "outbox",
        "transport",
        "blobs",
        "sink",
        "plugin",
    }

    failures: list[str] = []
    for at in range(1, len(operations) + 1):
        world = World(external_transport=external)
        faults = FaultInjector(at=at, mode=mode)
        try:
            await play(world, faults)
            assert faults.fired is not None, f"the fault never fired ({faults.count} operations)"
            await world.check_invariants()
            assert await world.final_state() == expected, "a different final state"
            assert len(await world.runs()) == len(RUNS), "a run created twice"
        except AssertionError as exc:
            failures.append(f"{mode} at {at} ({faults.fired}): {exc}")
    assert not failures, f"{len(failures)} of {len(operations)}:\n" + "\n".join(failures[:20])


async def test_the_sweep_reaches_every_kind_of_commit_point() -> None:
    _, operations = await _reference(external=False)
    commits = operations.count("persistence.commit")
    assert commits >= 20
    assert "transport.dequeue" in operations
    assert "blobs.put" in operations and "blobs.get" in operations
    assert "sink.publish" in operations and "plugin:audit" in operations


async def test_on_sqlite_a_sample_of_faults_ends_in_the_fault_free_state(tmp_path: Path) -> None:
    # The same sweep through the SQL adapter's real transactions, sampled to keep it short:
    # a crash after every fifth commit (the caller never hears of it), and an error at
    # every twenty-fifth operation of any kind.
    reference = await SqlWorld.open(f"sqlite+aiosqlite:///{tmp_path / 'reference.db'}")
    counting = FaultInjector()
    try:
        await play(reference, counting)
        await reference.check_invariants()
        expected = await reference.final_state()
    finally:
        await reference.close()
    operations = counting.operations
    commits = [i + 1 for i, op in enumerate(operations) if op == "persistence.commit"]
    sample: list[tuple[FaultMode, int]] = [("crash", at) for at in commits[1::5]]
    sample += [("raise", at) for at in range(7, len(operations) + 1, 25)]

    failures: list[str] = []
    for n, (mode, at) in enumerate(sample):
        world = await SqlWorld.open(f"sqlite+aiosqlite:///{tmp_path / f'{n}.db'}")
        faults = FaultInjector(at=at, mode=mode)
        try:
            await play(world, faults)
            await world.check_invariants()
            assert await world.final_state() == expected, "a different final state"
        except AssertionError as exc:
            failures.append(f"{mode} at {at} ({faults.fired}): {exc}")
        finally:
            await world.close()
    assert not failures, f"{len(failures)} of {len(sample)}:\n" + "\n".join(failures[:20])
