"""`SqsJobTransport`: the kernel feeds SQS after commit through an injected send function;
delivery is the platform's. No AWS account, no AWS library."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

import stagewise_serverless
from stagewise import JobMessage, RunStatus, TransientError
from stagewise.testing import FakeClock
from stagewise_serverless import SqsJobTransport, encode_job_message, parse_job_message

from ._support import single
from .conftest import MakeDeployment


def job(n: int, clock: FakeClock, *, due_in: float = 0, priority: int = 0) -> JobMessage:
    return JobMessage(
        job_id=f"job-{n}",
        run_id=f"run-{n}",
        workflow_id="wf",
        stage_id="only",
        attempt=1,
        available_at=clock.now() + timedelta(seconds=due_in),
        priority=priority,
    )


class Recorder:
    def __init__(self, response: dict[str, Any] | None = None) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.response = response

    async def __call__(self, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        self.calls.append(entries)
        return self.response


async def test_jobs_are_sent_ten_to_a_call_as_json_bodies_the_host_reads_back() -> None:
    clock = FakeClock()
    send = Recorder()
    jobs = [job(n, clock, priority=n % 3) for n in range(25)]

    await SqsJobTransport(send, clock=clock).enqueue(jobs)

    assert [len(c) for c in send.calls] == [10, 10, 5]
    entries = [e for call in send.calls for e in call]
    assert [e["Id"] for e in send.calls[2]] == ["0", "1", "2", "3", "4"]
    assert [parse_job_message(e["MessageBody"]) for e in entries] == jobs
    assert entries[0]["MessageBody"] == encode_job_message(jobs[0])
    assert json.loads(entries[0]["MessageBody"])["available_at"] == "2026-01-01T00:00:00+00:00"


async def test_a_job_due_later_is_delayed_up_to_sqs_s_fifteen_minute_limit() -> None:
    clock = FakeClock()
    send = Recorder()
    jobs = [job(1, clock, due_in=-5), job(2, clock, due_in=0.2), job(3, clock, due_in=600),
            job(4, clock, due_in=3600)]  # fmt: skip

    await SqsJobTransport(send, clock=clock).enqueue(jobs)

    assert [e["DelaySeconds"] for e in send.calls[0]] == [0, 1, 600, 900]


async def test_messages_the_queue_refuses_raise_a_transient_error_naming_the_jobs() -> None:
    clock = FakeClock()
    send = Recorder({"Successful": [{"Id": "0"}], "Failed": [{"Id": "1", "Code": "Throttled"}]})

    with pytest.raises(TransientError, match=r"refused 1 job message\(s\) \['job-2'\]: Throttled"):
        await SqsJobTransport(send, clock=clock).enqueue([job(1, clock), job(2, clock)])


async def test_delivery_acknowledgement_and_leases_are_the_queue_s_own_business() -> None:
    clock = FakeClock()
    send = Recorder()
    transport = SqsJobTransport(send, clock=clock)

    assert await transport.dequeue(worker_id="w", limit=10, lease_for=30) == []
    await transport.ack(["job-1"])
    await transport.retry_at("job-1", clock.now())
    assert await transport.extend_lease("job-1", lease_for=30) is True
    assert await transport.release_expired() == 0
    assert await transport.discard_run("run-1") == 0
    assert send.calls == []


async def test_a_send_lost_after_commit_is_repeated_by_maintenance(
    deploy: MakeDeployment,
) -> None:
    d = deploy([single()], sqs=True)
    assert d.sqs is not None
    run_id = await d.create_run("single")
    d.sqs.refuse = lambda entry: True  # the queue is unreachable right after the commit

    await d.host().run_maintenance_tick()  # claims the run; the send fails (logged)
    assert len(d.sqs) == 0
    d.sqs.refuse = None
    d.clock.advance(301)  # KernelSettings.requeue_after
    tick = await d.host().run_maintenance_tick()

    assert tick.requeued == 1
    [record] = d.sqs.receive()["Records"]
    assert (await d.host().handle_job(record["body"])).outcome == "completed"
    assert (await d.get_run(run_id)).status is RunStatus.COMPLETED


def test_the_public_surface_is_pinned() -> None:
    assert stagewise_serverless.__all__ == [
        "HostFactory",
        "JobCounts",
        "JobOutcome",
        "JobResult",
        "LambdaAdapter",
        "LambdaContext",
        "MaintenanceCounts",
        "MalformedJobMessageError",
        "SendBatch",
        "ServerlessHost",
        "ServerlessSettings",
        "SqsJobTransport",
        "TickScheduler",
        "encode_job_message",
        "parse_job_message",
    ]
    for name in stagewise_serverless.__all__:
        assert getattr(stagewise_serverless, name) is not None
