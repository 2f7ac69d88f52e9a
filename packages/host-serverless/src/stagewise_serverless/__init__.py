"""stagewise-serverless: the stateless host of stagewise.

One job, a few jobs, or one maintenance tick per invocation; nothing kept between
invocations matters for correctness. `LambdaAdapter` turns it into AWS Lambda handlers for
an SQS event source (partial batch failures) and a scheduled maintenance event.

    host = ServerlessHost(kernel=kernel, job_transport=transport, worker_id="fn")
    result = await host.handle_job(message_body)
    counts = await host.run_maintenance_tick()
"""

from stagewise_serverless._host import ServerlessHost
from stagewise_serverless._lambda import HostFactory, LambdaAdapter, LambdaContext
from stagewise_serverless._messages import (
    MalformedJobMessageError,
    encode_job_message,
    parse_job_message,
)
from stagewise_serverless._results import JobCounts, JobOutcome, JobResult, MaintenanceCounts
from stagewise_serverless._scheduler import TickScheduler
from stagewise_serverless._settings import ServerlessSettings
from stagewise_serverless._sqs import SendBatch, SqsJobTransport

__version__ = "0.1.0"

__all__ = [
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
