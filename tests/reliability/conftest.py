"""Fixtures of the reliability tests: worker processes of `crash_app`, and a client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stagewise import Kernel, KernelSettings, create_kernel
from stagewise.testing import NoopEventSink, NoopScheduler
from stagewise_sql import SqlBackend
from tests.integration.node.processes import ROOT, Client, Worker, Workers
from tests.reliability.crash_app import PHASE_ENV, SINK_ENV, registry


class CrashWorkers(Workers):
    """Workers of `tests.reliability.crash_app`, which die where `phase` says."""

    @property
    def sink(self) -> Path:
        return self.tmp / "sink.jsonl"

    def spawn_app(self, worker_id: str, *, phase: str = "", lease: float = 1.5) -> Worker:
        log = self.tmp / f"{worker_id}.log"
        env = self.env()
        env[PHASE_ENV] = phase
        env[SINK_ENV] = str(self.sink)
        args = [
            sys.executable,
            "-m",
            "tests.reliability.crash_app",
            f"--db={self.url}",
            f"--worker-id={worker_id}",
            f"--lease={lease}",
        ]
        with log.open("ab") as out:
            process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        worker = Worker(worker_id, process, log)
        self.started.append(worker)
        return worker


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'stagewise.db'}"


@pytest.fixture
def crash_workers(sqlite_url: str, tmp_path: Path) -> Iterator[CrashWorkers]:
    pool = CrashWorkers(url=sqlite_url, tmp=tmp_path, side=tmp_path / "side.db")
    try:
        yield pool
    finally:
        pool.kill_all()


def client_kernel(backend: SqlBackend) -> Kernel:
    return create_kernel(
        persistence=backend.persistence,
        blob_store=backend.blob_store,
        job_transport=backend.job_transport,
        event_sink=NoopEventSink(),
        scheduler=NoopScheduler(),
        clock=backend.clock,
        registry=registry,
        settings=KernelSettings(),
    )


@pytest.fixture
async def crash_client(sqlite_url: str) -> AsyncIterator[Client]:
    backend = await SqlBackend.connect(sqlite_url)  # the schema, before any worker starts
    c = Client(backend, client_kernel(backend))
    try:
        yield c
    finally:
        await c.close()
