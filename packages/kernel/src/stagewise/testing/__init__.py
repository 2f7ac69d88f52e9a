"""Test helpers shipped with stagewise: in-memory adapters, a fake clock, and a driver that
runs a kernel to completion while skipping time.

    from stagewise.testing import TestEnvironment

    env = TestEnvironment(registry=WorkflowRegistry([wf]))
    run_id = await env.create_run("wf", {"n": 1})
    await env.run_until_idle()          # an hour of retries and polls, in milliseconds

`FaultInjector` wraps any adapters to fail (or "crash") at the Nth operation, to prove that
recovery loses nothing.
"""

from stagewise.testing._adapters import (
    CollectingEventSink,
    InMemoryBlobStore,
    InMemoryJobQueue,
    NoopEventSink,
    NoopScheduler,
    RecordingScheduler,
    SequentialIds,
)
from stagewise.testing._clock import FakeClock
from stagewise.testing._driver import DriveReport, StuckError, TestEnvironment, run_until_idle
from stagewise.testing._faults import (
    FaultInjector,
    FaultMode,
    FaultyTransaction,
    InjectedFault,
    SimulatedCrash,
)
from stagewise.testing._memory import InMemoryPersistence, MemoryTransaction

__all__ = [
    "CollectingEventSink",
    "DriveReport",
    "FakeClock",
    "FaultInjector",
    "FaultMode",
    "FaultyTransaction",
    "InMemoryBlobStore",
    "InMemoryJobQueue",
    "InMemoryPersistence",
    "InjectedFault",
    "MemoryTransaction",
    "NoopEventSink",
    "NoopScheduler",
    "RecordingScheduler",
    "SequentialIds",
    "SimulatedCrash",
    "StuckError",
    "TestEnvironment",
    "run_until_idle",
]
